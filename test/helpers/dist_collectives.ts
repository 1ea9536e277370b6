/**
 * One process of the collectives test (test/distributed.test.ts): joins the group the launcher
 * variables describe (Gloo) and prints what ProcessGroup.allGather returns for rank-dependent inputs.
 */
import { ProcessGroup } from '../../lib';

async function main(): Promise<void> {
  const group = await ProcessGroup.fromEnv({ timeoutSeconds: 60, device: 'cpu' });
  if (!group) throw new Error('no launcher variables');
  const r = group.rank;
  // rank r: r + 1 values, one of them beyond 32 bits and one negative
  const values = Array.from({ length: r + 1 }, (_, i) => (i === 0 ? 2 ** 40 + r : -(10 * r + i)));
  const gathered = await group.allGather(values);
  const empty = await group.allGather([]);
  process.stdout.write(`RESULT ${JSON.stringify({ rank: r, gathered, empty })}\n`);
  group.dispose();
}

main().catch((err: Error) => {
  process.stderr.write(`worker failed: ${err.message}\n`);
  process.exit(1);
});
