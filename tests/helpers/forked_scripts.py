"""Runs script invocations from one Python process, each in a child forked
from it: the cost of one interpreter start-up (and of the modules imported
before the forks) instead of one per invocation. Run as
`python -c <this file's text> [MODULE ...]`, as `python -c` runs a script's
probe (sys.path[0] is the current folder):

  stdin:  one JSON [script, argv, cwd] a line
  stdout: "ready" (JSON) once the MODULEs are imported, then one JSON
          [exit status, stdout, stderr, whether `tensorflow` was in
          sys.modules at exit (null if the child ended before it could
          say)] a line, one per invocation, as each ends

The MODULEs are imported once, before the first fork (anything they print
on stdout spoils the "ready" line). Each child chdirs to its cwd, gets
sys.argv = [script] + argv, writes its stdout and stderr to files of its
own, runs the script as __main__ (runpy) and exits as the interpreter
would: atexit handlers run, SystemExit's code is the status (None 0, a
message printed and 1), any other exception prints its traceback and
gives 1. Its stdin is /dev/null.
"""

import atexit
import importlib
import json
import os
import runpy
import sys
import tempfile
import traceback


def _exit_status(stop):
  if stop.code is None:
    return 0
  if isinstance(stop.code, int):
    return stop.code
  print(stop.code, file=sys.stderr)
  return 1


def _child(script, argv, cwd, out, err, probe):
  """The invocation, in the forked child; returns its exit status."""
  os.chdir(cwd)
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  os.dup2(out, 1)
  os.dup2(err, 2)
  sys.argv = [script] + list(argv)
  try:
    runpy.run_path(script, run_name='__main__')
    status = 0
  except SystemExit as stop:
    status = _exit_status(stop)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    status = 1
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  os.write(probe, b'1' if 'tensorflow' in sys.modules else b'0')
  sys.stdout.flush()
  sys.stderr.flush()
  return status


def _run(script, argv, cwd):
  files = [tempfile.TemporaryFile() for _ in range(3)]
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    status = 1
    try:
      status = _child(script, argv, cwd, *(f.fileno() for f in files))
    finally:
      os._exit(status)  # pylint: disable=protected-access
  _, wait_status = os.waitpid(pid, 0)
  said = []
  for f in files:
    f.seek(0)
    said.append(f.read().decode())
    f.close()
  out, err, probe = said
  return [os.waitstatus_to_exitcode(wait_status), out, err,
          {'1': True, '0': False}.get(probe)]


def main(modules):
  for module in modules:
    importlib.import_module(module)
  print(json.dumps('ready'), flush=True)
  for line in sys.stdin:
    print(json.dumps(_run(*json.loads(line))), flush=True)


main(sys.argv[1:])
