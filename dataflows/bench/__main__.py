import sys

from dataflows.bench.scenarios import main_child

main_child(sys.argv[1:])
