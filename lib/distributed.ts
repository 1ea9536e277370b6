/**
 * Data-parallel training across processes on PyTorch's c10d: a `ProcessGroup` joins a TCPStore
 * rendezvous (rank 0 serves it, or a launcher's agent does) with ProcessGroupGloo (CPU) or
 * ProcessGroupNCCL (CUDA). The Trainer averages gradients over it, DataLoaders shard by it, and
 * evaluation merges the ranks' detections through its store.
 */
import { native, NativeProcessGroup } from './binding';
import type { Device } from './tensor';
import { Tensor } from './tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from './validate';

export type DistBackend = 'gloo' | 'nccl';

export interface ProcessGroupOptions {
  /** 'gloo' (CPU tensors) or 'nccl' (CUDA tensors); default: 'nccl' when `device` is CUDA, else 'gloo'. */
  backend?: DistBackend;
  /** Where the model trains; picks the backend and (NCCL) this rank's GPU. Default 'cpu'. */
  device?: Device;
  masterAddr: string;
  masterPort: number;
  rank: number;
  worldSize: number;
  /** Rendezvous, collectives and store reads fail after this many seconds; default 300. */
  timeoutSeconds?: number;
  /** The store is served by the launcher (torchrun's agent store), not by rank 0. */
  agentStore?: boolean;
  /** Gloo: the network interface to use (default GLOO_SOCKET_IFNAME, else by the master address). */
  interface?: string;
}

/** The launcher variables of this process (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or undefined when WORLD_SIZE is unset. */
export interface DistEnvironment {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
  agentStore: boolean;
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number, max: number, fallback?: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback;
    throw new Error(`data-parallel training: the environment variable ${name} is not set (set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, or use onestage train --nproc N)`);
  }
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new RangeError(`data-parallel training: ${name} must be an integer in [${min}, ${max}], it is '${raw}'`);
  return n;
}

/** Reads the launcher variables; undefined when WORLD_SIZE is not set (a single process). */
export function distEnvironment(env: NodeJS.ProcessEnv = process.env): DistEnvironment | undefined {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return undefined;
  const worldSize = envInt(env, 'WORLD_SIZE', 1, 1 << 20);
  const rank = envInt(env, 'RANK', 0, worldSize - 1);
  const localRank = envInt(env, 'LOCAL_RANK', 0, worldSize - 1, rank);
  const masterPort = envInt(env, 'MASTER_PORT', 1, 65535, worldSize === 1 ? 29500 : undefined);
  const masterAddr = env.MASTER_ADDR || (worldSize === 1 ? '127.0.0.1' : '');
  if (!masterAddr) throw new Error('data-parallel training: the environment variable MASTER_ADDR is not set');
  return { rank, worldSize, localRank, masterAddr, masterPort, agentStore: env.TORCHELASTIC_USE_AGENT_STORE === 'True' };
}

/** The backends this build of onestage can use. */
export function distBackends(): DistBackend[] {
  return native().distBackends() as DistBackend[];
}

export class ProcessGroup {
  readonly rank: number;
  readonly worldSize: number;
  readonly backend: DistBackend;
  /** Where the group's collectives run: 'cpu' (gloo) or this rank's GPU (nccl). */
  readonly device: Device;
  readonly timeoutSeconds: number;
  private handle: NativeProcessGroup | null;
  private sequence = 0;

  private constructor(handle: NativeProcessGroup) {
    this.handle = handle;
    const info = native().distInfo(handle);
    this.rank = info.rank;
    this.worldSize = info.worldSize;
    this.backend = info.backend as DistBackend;
    this.device = info.device as Device;
    this.timeoutSeconds = info.timeoutMs / 1000;
  }

  /**
   * Joins the group: resolves when every rank has connected (an error after the timeout).
   * @example const group = await ProcessGroup.init({ masterAddr: '127.0.0.1', masterPort: 29500, rank, worldSize: 2 });
   */
  static async init(options: ProcessGroupOptions): Promise<ProcessGroup> {
    const o = checkOptions('options', options) as ProcessGroupOptions;
    const device = o.device ?? 'cpu';
    const cuda = device.startsWith('cuda');
    const backend = o.backend ?? (cuda ? 'nccl' : 'gloo');
    checkOneOf('options.backend', backend, ['gloo', 'nccl'] as const);
    if (backend === 'nccl' && !cuda) throw new RangeError(`the nccl backend needs a CUDA device; options.device is '${device}'`);
    if (backend === 'gloo' && cuda) throw new RangeError(`the gloo backend here runs on CPU tensors; use backend 'nccl' for device '${device}'`);
    const timeout = o.timeoutSeconds ?? 300;
    if (typeof timeout !== 'number' || !(timeout > 0) || !Number.isFinite(timeout)) throw invalid('options.timeoutSeconds', 'a positive number of seconds', timeout, RangeError);
    if (typeof o.masterAddr !== 'string' || o.masterAddr === '') throw invalid('options.masterAddr', 'a host name or address', o.masterAddr);
    const worldSize = checkInteger('options.worldSize', o.worldSize, 1, 1 << 20);
    const handle = await native().distInitAsync({
      backend,
      masterAddr: o.masterAddr,
      masterPort: checkInteger('options.masterPort', o.masterPort, 1, 65535),
      worldSize,
      rank: checkInteger('options.rank', o.rank, 0, worldSize - 1),
      timeoutMs: Math.max(1, Math.round(timeout * 1000)),
      agentStore: o.agentStore ?? false,
      interface: o.interface ?? process.env.GLOO_SOCKET_IFNAME ?? '',
      deviceIndex: cuda ? Number(device.split(':')[1] ?? 0) : 0,
    });
    return new ProcessGroup(handle);
  }

  /** Joins the group the launcher variables describe (see `distEnvironment`); undefined when WORLD_SIZE is unset. */
  static async fromEnv(options: Omit<ProcessGroupOptions, 'masterAddr' | 'masterPort' | 'rank' | 'worldSize' | 'agentStore'> = {}, env: NodeJS.ProcessEnv = process.env): Promise<ProcessGroup | undefined> {
    const e = distEnvironment(env);
    if (!e) return undefined;
    return ProcessGroup.init({ ...options, masterAddr: e.masterAddr, masterPort: e.masterPort, rank: e.rank, worldSize: e.worldSize, agentStore: e.agentStore });
  }

  /** Rank 0: the one that writes checkpoints, records, plots and evaluations. */
  get isMain(): boolean {
    return this.rank === 0;
  }

  /** This rank's shard, for `new DataLoader(dataset, { shard: group.shard })`. */
  get shard(): { rank: number; count: number } {
    return { rank: this.rank, count: this.worldSize };
  }

  /** @internal */
  get nativeHandle(): NativeProcessGroup {
    if (!this.handle) throw new Error('the process group has been disposed');
    return this.handle;
  }

  /** The element-wise mean of `tensor` over the ranks (a new tensor on the input's device). */
  async mean(tensor: Tensor): Promise<Tensor> {
    return new Tensor(await native().distMeanAsync(this.nativeHandle, tensor.handle));
  }

  /**
   * Every rank's integers, in rank order, on every rank: `result[r]` is rank r's `values`. Every rank
   * must call it, in the same order as the other collectives; ranks may pass arrays of different lengths
   * (the lengths are gathered first). Safe integers only (|v| < 2^53).
   * @example const [mine, theirs] = await group.allGather([imagesSeen]); // with 2 ranks
   */
  async allGather(values: number[]): Promise<number[][]> {
    if (!Array.isArray(values) || values.some((v) => !Number.isSafeInteger(v))) throw invalid('values', 'an array of safe integers', values);
    const h = this.nativeHandle;
    const lengths = await native().distAllGatherAsync(h, [values.length]);
    const longest = Math.max(...lengths);
    if (longest === 0) return lengths.map(() => []);
    const all = await native().distAllGatherAsync(h, [...values, ...new Array<number>(longest - values.length).fill(0)]);
    return lengths.map((n, r) => all.slice(r * longest, r * longest + n));
  }

  /** Resolves when every rank has called it with the same label. */
  async barrier(what = 'barrier'): Promise<void> {
    await native().distBarrierAsync(this.nativeHandle, what);
  }

  private nextKey(name: string): string {
    return `${name}/${this.sequence++}`;
  }

  /**
   * Every rank's JSON value, in rank order, on rank 0 (undefined elsewhere). Every rank must call
   * it, in the same order as the other collectives.
   */
  async gather<T>(name: string, value: T): Promise<T[] | undefined> {
    const key = this.nextKey(`gather/${name}`);
    const h = this.nativeHandle;
    await native().distStoreSetAsync(h, `${key}/${this.rank}`, Buffer.from(JSON.stringify(value), 'utf8'));
    if (!this.isMain) return undefined;
    const out: T[] = [];
    for (let r = 0; r < this.worldSize; r++) {
      out.push(JSON.parse((await native().distStoreGetAsync(h, `${key}/${r}`)).toString('utf8')) as T);
      await native().distStoreDeleteAsync(h, `${key}/${r}`);
    }
    return out;
  }

  /** Rank 0's JSON value on every rank (what other ranks pass is ignored). */
  async share<T>(name: string, value: T | undefined): Promise<T> {
    const key = this.nextKey(`share/${name}`);
    const h = this.nativeHandle;
    if (this.isMain) await native().distStoreSetAsync(h, key, Buffer.from(JSON.stringify(value ?? null), 'utf8'));
    const got = JSON.parse((await native().distStoreGetAsync(h, key)).toString('utf8')) as T;
    // rank 0 may delete it once everyone has read it: the next collective orders that
    await this.barrier(`after sharing ${name}`);
    if (this.isMain) await native().distStoreDeleteAsync(h, key);
    return got;
  }

  /** Leaves the group (the native group is freed when nothing uses it any more). */
  dispose(): void {
    if (this.handle) native().distDispose(this.handle);
    this.handle = null;
  }
}
