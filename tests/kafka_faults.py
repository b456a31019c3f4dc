"""A real fatal error in a real librdkafka producer, on demand.

librdkafka raises fatal errors (an idempotent producer's sequence state out
of step with the broker's) only in races a test cannot time. Its own test
hook, ``rd_kafka_test_fatal_error``, raises one in a live producer exactly
as the broker would: confluent-kafka does not expose it, so it is called
through ctypes on the library confluent-kafka ships, with the producer's
``rd_kafka_t`` handle (the first field of its Python object).
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any

import confluent_kafka

OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def _librdkafka() -> ctypes.CDLL:
    libs = os.path.join(
        os.path.dirname(os.path.dirname(confluent_kafka.__file__)), "confluent_kafka.libs"
    )
    (path,) = glob.glob(os.path.join(libs, "librdkafka*"))
    lib = ctypes.CDLL(path)
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    lib.rd_kafka_test_fatal_error.restype = ctypes.c_int
    return lib


def inject_fatal(producer: Any, client_id: str) -> None:
    """Raise a fatal OUT_OF_ORDER_SEQUENCE_NUMBER in `producer` (a
    ``confluent_kafka.Producer`` made with `client_id`)."""
    lib = _librdkafka()
    handle = ctypes.c_void_p.from_address(id(producer) + object.__basicsize__).value
    name = lib.rd_kafka_name(handle).decode()
    assert name.startswith(f"{client_id}#producer-"), f"not the producer's handle: {name}"
    err = lib.rd_kafka_test_fatal_error(handle, OUT_OF_ORDER_SEQUENCE_NUMBER, b"injected by a test")
    assert err == 0, err
