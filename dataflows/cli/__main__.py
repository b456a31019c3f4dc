from dataflows.cli.main import main

main()
