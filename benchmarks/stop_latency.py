"""Times how long a script takes to stop after Ctrl-C (SIGINT) or a
scheduler's SIGTERM, and what it says when it does.

  python benchmarks/stop_latency.py --signal=INT --after=45 -- \\
      python run/attack.py --checkpoint=pretrained/teacher_mnist_cpu \\
      --classifier=PosK --num_samples=300 --out_dir=/tmp/latency_attack

The command after `--` starts as a terminal's foreground job would (SIGINT
not ignored). Once a line it prints (stdout or stderr) contains --wait_for
(default: any line), the signal is sent --after seconds later; printed: the
seconds from the signal to the exit (and to the script's `interrupted`
line), the exit status and the script's last lines.
"""

import argparse
import signal
import subprocess
import sys
import threading
import time


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--signal', default='INT', choices=('INT', 'TERM'))
  parser.add_argument('--wait_for', default='',
                      help='Text of a printed line that starts the clock.')
  parser.add_argument('--after', type=float, default=30.,
                      help='Seconds between that line and the signal.')
  parser.add_argument('--tail', type=int, default=4,
                      help='Last stderr lines to print.')
  parser.add_argument('command', nargs=argparse.REMAINDER)
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  proc = subprocess.Popen(
      command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  lines, seen, said = [], threading.Event(), []

  def read(stream):
    for line in stream:
      lines.append(line.rstrip('\n'))
      if args.wait_for in line:
        seen.set()
      if line.startswith('interrupted') and not said:
        said.append(time.time())

  readers = [threading.Thread(target=read, args=(stream,), daemon=True)
             for stream in (proc.stdout, proc.stderr)]
  for reader in readers:
    reader.start()
  while not seen.wait(.1):
    if proc.poll() is not None:
      sys.exit(f'the command ended before {args.wait_for!r}:\n'
               + '\n'.join(lines[-args.tail:]))
  time.sleep(args.after)
  if proc.poll() is not None:
    sys.exit('the command ended before the signal')
  sent = time.time()
  proc.send_signal(getattr(signal, f'SIG{args.signal}'))
  status = proc.wait()
  took = time.time() - sent
  for reader in readers:
    reader.join(5)
  print(f'SIG{args.signal} -> exit in {took:.1f} s, status {status}'
        + (f' (said "interrupted" after {said[0] - sent:.1f} s)' if said
           else ''))
  print('\n'.join(lines[-args.tail:]))


if __name__ == '__main__':
  main()
