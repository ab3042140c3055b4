"""glibc's malloc as the server sets it up (image_classifier/allocator.py), each case in a fresh process: the
settings only count from the start of a process."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

PROBE = """
import ctypes, sys, threading, tempfile, xml.etree.ElementTree as ET
sys.path.insert(0, {root!r})
from image_classifier.allocator import tune_malloc

class Info(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]

def arenas():
    path = tempfile.mktemp()
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    return len(ET.parse(path).getroot().findall("heap"))

if {tune}:
    assert tune_malloc()
# A decode buffer of a 2400-pixel photo, freed; then the next photo's.
first = bytearray(17 << 20)
del first
second = bytearray(16 << 20)
mapped = libc.mallinfo2().hblkhd >= 16 << 20
del second
# Sixteen threads that allocate at the same time.
start = threading.Barrier(16)
def work():
    start.wait()
    for _ in range(2000):
        [bytearray(100) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(mapped, arenas())
"""


def probe(tune: bool) -> tuple[bool, int]:
    script = textwrap.dedent(PROBE).format(root=str(ROOT), tune=tune)
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    mapped, arenas = output.split()
    return mapped == "True", int(arenas)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_buffers_stay_mapped_and_threads_share_two_arenas():
    assert probe(tune=True) == (True, 2)
    # glibc's own behaviour, which the settings change: the second buffer comes from the heap, and the threads
    # get arenas of their own.
    mapped, arenas = probe(tune=False)
    assert not mapped and arenas > 2


RESTARTS = """
import os, sys
sys.path.insert(0, {root!r})
print("started", os.getpid(), os.environ.get("PYTHONMALLOC"), flush=True)
from image_classifier.allocator import restart_with_malloc
restart_with_malloc()
objects = [object() for _ in range(100_000)]  # Python's small objects, from whichever allocator it was given
print("running", os.getpid(), os.environ.get("PYTHONMALLOC"), sys.argv[1:])
"""


def restarts(**environment: str) -> list[list[str]]:
    script = textwrap.dedent(RESTARTS).format(root=str(ROOT))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONMALLOC"} | environment
    output = subprocess.run(
        [sys.executable, "-c", script, "photo.jpg"], capture_output=True, text=True, check=True, env=env
    ).stdout
    return [line.split(" ", 3) for line in output.splitlines()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_server_restarts_in_place_once_with_pythons_objects_from_malloc():
    (first, pid, unset), (again, same_pid, chosen), (running, last_pid, allocator, argv) = restarts()
    assert (first, unset, again, chosen) == ("started", "None", "started", "malloc")
    assert (running, allocator, argv) == ("running", "malloc", "['photo.jpg']")  # the same command line
    assert pid == same_pid == last_pid  # in place: whoever started it still has its process


def test_an_allocator_chosen_by_the_operator_is_kept():
    (first, _, chosen), (running, _, allocator, _) = restarts(PYTHONMALLOC="pymalloc")
    assert (first, chosen, running, allocator) == ("started", "pymalloc", "running", "pymalloc")
