/**
 * `onestage train --nproc N`: starts N local worker processes of the same command (one per GPU on
 * CUDA), each with the launcher variables of torchrun (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
 * LOCAL_RANK, LOCAL_WORLD_SIZE), forwards their output line by line with a `[rank i]` prefix, and
 * when one fails stops the others (as torchrun does) and exits with its code. Unless OMP_NUM_THREADS or
 * MKL_NUM_THREADS is set, each worker gets OMP_NUM_THREADS = this process's LibTorch threads ÷ N (at
 * least 1), so N workers on one machine share its cores instead of each taking all of them.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as readline from 'node:readline';
import { getNumThreads } from '../runtime';

export interface LaunchOptions {
  /** The worker command line after the script (the `--nproc` flag removed). */
  args: string[];
  /** Default: this process's node, its execArgv and script. */
  command?: { execPath: string; execArgv: string[]; script: string };
  /** Extra environment for every worker. */
  env?: NodeJS.ProcessEnv;
  /** Seconds between asking the other workers to stop (SIGTERM) and killing them; default 10. */
  graceSeconds?: number;
  /** Where the prefixed lines go; default stdout/stderr of this process. */
  out?: (line: string, stream: 'stdout' | 'stderr') => void;
}

export interface LaunchResult {
  /** 0 when every worker succeeded, else the first failing worker's code (1 for a signal). */
  exitCode: number;
  /** The first worker that failed, and how. */
  failed?: { rank: number; code: number | null; signal: NodeJS.Signals | null };
}

/** A TCP port free on the loopback interface now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** `args` without `--nproc N` / `--nproc=N`. */
export function withoutNproc(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--nproc') i++;
    else if (!args[i].startsWith('--nproc=')) out.push(args[i]);
  }
  return out;
}

export async function launchWorkers(nproc: number, options: LaunchOptions): Promise<LaunchResult> {
  if (!Number.isInteger(nproc) || nproc < 1) throw new RangeError(`--nproc expects an integer ≥ 1, received ${nproc}`);
  const script = options.command?.script ?? process.argv[1];
  const execArgv = options.command?.execArgv ?? (script.endsWith('.ts') && !process.execArgv.some((a) => a.includes('ts-node')) ? [...process.execArgv, '-r', 'ts-node/register/transpile-only'] : process.execArgv);
  const execPath = options.command?.execPath ?? process.execPath;
  const out = options.out ?? ((line, stream) => (stream === 'stdout' ? process.stdout : process.stderr).write(line + '\n'));
  const port = await freePort();
  const given = { ...process.env, ...options.env };
  const threads = given.OMP_NUM_THREADS || given.MKL_NUM_THREADS ? {} : { OMP_NUM_THREADS: String(Math.max(1, Math.floor(getNumThreads() / nproc))) };
  const children: ChildProcess[] = [];
  let failed: LaunchResult['failed'];
  let killer: NodeJS.Timeout | undefined;
  const stopOthers = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    killer ??= setTimeout(() => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }, (options.graceSeconds ?? 10) * 1000);
    killer.unref();
  };
  const onSignal = (signal: NodeJS.Signals) => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const exits = Array.from({ length: nproc }, (_, rank) => {
      const child = spawn(execPath, [...execArgv, script, ...options.args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          ...threads,
          ...options.env,
          MASTER_ADDR: '127.0.0.1',
          MASTER_PORT: String(port),
          WORLD_SIZE: String(nproc),
          RANK: String(rank),
          LOCAL_RANK: String(rank),
          LOCAL_WORLD_SIZE: String(nproc),
        },
      });
      children.push(child);
      for (const stream of ['stdout', 'stderr'] as const) readline.createInterface({ input: child[stream]! }).on('line', (line) => out(`[rank ${rank}] ${line}`, stream));
      return new Promise<void>((resolve) => {
        child.on('error', (err) => {
          out(`[rank ${rank}] could not start: ${err.message}`, 'stderr');
          failed ??= { rank, code: 1, signal: null };
          stopOthers();
          resolve();
        });
        child.on('exit', (code, signal) => {
          if ((code !== 0 || signal) && !failed) {
            failed = { rank, code, signal };
            out(`[launcher] rank ${rank} ${signal ? `was killed by ${signal}` : `exited with code ${code}`}; stopping the other ranks`, 'stderr');
            stopOthers();
          }
        });
        child.on('close', () => resolve()); // after its output was forwarded
      });
    });
    await Promise.all(exits);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (killer) clearTimeout(killer);
  }
  return { exitCode: failed ? (failed.code && failed.code > 0 ? failed.code : 1) : 0, failed };
}
