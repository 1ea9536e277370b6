/**
 * libuv's thread pool runs every asynchronous native call of onestage — the DataLoader's decoding with
 * sharp (one picture per pool thread: sharp runs one libvips thread per picture on glibc Linux), its
 * collating and uploads, CPU training steps — and Node's file system calls. Its default of 4 threads
 * caps decoding at 4 pictures at once however many cores there are (on a 16-core GPU host: a loader
 * at 55 % of the GPU's step rate). Unless `UV_THREADPOOL_SIZE` is set, importing onestage sets it to
 * the number of cores (at least 4, at most 64). libuv reads it when the pool starts, at the first
 * asynchronous call of the process — and loading sharp is one: import onestage before sharp (a warning
 * says when sharp came first), or set it in the environment.
 */
import * as os from 'node:os';

/** The pool size onestage asks for when UV_THREADPOOL_SIZE is unset: the cores, 4 to 64. */
export function defaultThreadpoolSize(): number {
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.min(64, Math.max(4, cores));
}

if (process.env.UV_THREADPOOL_SIZE === undefined || process.env.UV_THREADPOOL_SIZE === '') {
  const size = defaultThreadpoolSize();
  process.env.UV_THREADPOOL_SIZE = String(size);
  // Loading sharp starts the pool (a process's thread count grows by the pool's size at require('sharp')):
  // where a script imported sharp first, the pool already runs with libuv's default of 4 threads and the
  // setting above comes too late — say so rather than decode at a quarter of the machine's rate silently.
  if (size > 4 && Object.keys(require.cache).some((k) => /[\\/]node_modules[\\/]sharp[\\/]/.test(k)))
    process.emitWarning(
      `sharp was loaded before onestage, so libuv's thread pool started with its default of 4 threads (4 pictures decoded at once) ` +
        `instead of ${size}: import onestage before sharp, or set UV_THREADPOOL_SIZE=${size} in the environment`,
      { code: 'ONESTAGE_THREADPOOL' },
    );
}
