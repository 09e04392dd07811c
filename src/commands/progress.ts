/**
 * A one-line progress display on stderr for commands that may run long (`flush`,
 * `sync`): only on a terminal, only after the first second, erased at the end.
 * Scripts (no TTY) see nothing.
 */
export async function withProgress<T>(work: Promise<T>, describe: (elapsedSeconds: number) => Promise<string> | string): Promise<T> {
  if (!process.stderr.isTTY) return work;
  const started = Date.now();
  let shown = false;
  let finished = false;
  const timer = setInterval(() => {
    const elapsed = (Date.now() - started) / 1000;
    if (elapsed < 1) return;
    Promise.resolve(describe(elapsed)).then(
      (text) => {
        if (finished) return;
        shown = true;
        process.stderr.write(`\r\x1b[K${text}`);
      },
      () => undefined, // a progress line that cannot be made is left out
    );
  }, 500);
  try {
    return await work;
  } finally {
    finished = true;
    clearInterval(timer);
    if (shown) process.stderr.write('\r\x1b[K');
  }
}
