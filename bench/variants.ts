/**
 * Environment variants for interleaved A/B rows (`--variants default,NAME=VALUE[+NAME=VALUE],…`): each names the
 * switches a row runs under; `withVariant` sets them for one row and gives the caller's values back after it.
 */
export interface Variant {
  name: string;
  env: Record<string, string>;
}

/** 'default' or NAME=VALUE pairs joined by '+', comma-separated; an Error naming the bad entry otherwise. */
export function parseVariants(list: string): Variant[] {
  return list.split(',').map((v) => {
    if (v === 'default') return { name: v, env: {} };
    const pairs = v.split('+').map((kv) => kv.split('='));
    if (pairs.some((kv) => kv.length !== 2 || !/^[A-Z][A-Z0-9_]*$/.test(kv[0]))) throw new Error(`--variants: 'default' or NAME=VALUE[+NAME=VALUE], not '${v}'`);
    return { name: v, env: Object.fromEntries(pairs) as Record<string, string> };
  });
}

/** Runs `f` with `env` set; the values set before (the caller's environment) come back after it, unset ones unset. */
export async function withEnv<T>(env: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return await f();
  } finally {
    for (const [k, v] of Object.entries(before)) if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  }
}
