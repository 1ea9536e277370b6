/**
 * assertClose: elementwise |actual − expected| ≤ atol + rtol·|expected|, failing with the worst
 * element (index, both values, absolute and relative error) so a parity failure says where.
 */
import type { ExecutionContext } from 'ava';
import { Tensor, TensorData } from '../../lib';
import type { BundleEntry } from './bundle';

export interface CloseOptions {
  atol?: number;
  rtol?: number;
  /** Treat NaN == NaN as equal (default true). */
  equalNan?: boolean;
  /** Name shown in the message. */
  name?: string;
}

export interface CloseReport {
  ok: boolean;
  maxAbs: number;
  maxRel: number;
  worst: number;
  message: string;
}

type Values = { shape: number[]; data: ArrayLike<number | bigint> };

function asValues(x: Tensor | BundleEntry | Values): Values {
  if (x instanceof Tensor) return { shape: x.shape, data: x.toArray() as TensorData };
  return x;
}

function unravel(index: number, shape: number[]): number[] {
  const out: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    out.unshift(index % shape[d]);
    index = Math.floor(index / shape[d]);
  }
  return out;
}

export function compareClose(actualIn: Tensor | BundleEntry | Values, expectedIn: Tensor | BundleEntry | Values, opts: CloseOptions = {}): CloseReport {
  const { atol = 1e-6, rtol = 1e-5, equalNan = true, name = 'tensor' } = opts;
  const actual = asValues(actualIn);
  const expected = asValues(expectedIn);
  const shapeA = actual.shape.join(',');
  const shapeE = expected.shape.join(',');
  if (shapeA !== shapeE)
    return { ok: false, maxAbs: Infinity, maxRel: Infinity, worst: -1, message: `${name}: shape [${shapeA}] ≠ expected [${shapeE}]` };
  let maxAbs = 0;
  let maxRel = 0;
  let worst = -1;
  let worstExcess = 0;
  let bad = 0;
  for (let i = 0; i < expected.data.length; i++) {
    const a = Number(actual.data[i]);
    const e = Number(expected.data[i]);
    if (Number.isNaN(a) || Number.isNaN(e)) {
      if (equalNan && Number.isNaN(a) && Number.isNaN(e)) continue;
      bad++;
      if (worstExcess !== Infinity) { worst = i; worstExcess = Infinity; }
      continue;
    }
    if (a === e) continue; // also equal infinities
    const abs = Math.abs(a - e);
    const rel = abs / Math.max(Math.abs(e), Number.MIN_VALUE);
    maxAbs = Math.max(maxAbs, abs);
    maxRel = Math.max(maxRel, rel);
    const excess = abs - (atol + rtol * Math.abs(e));
    if (excess > 0) {
      bad++;
      if (excess > worstExcess) { worstExcess = excess; worst = i; }
    }
  }
  const ok = bad === 0;
  let message = `${name}: max abs err ${maxAbs.toExponential(3)}, max rel err ${maxRel.toExponential(3)} (atol ${atol}, rtol ${rtol})`;
  if (!ok) {
    const idx = unravel(worst, expected.shape);
    message = `${name}: ${bad} of ${expected.data.length} elements differ; worst at [${idx.join(', ')}]: ` +
      `actual ${Number(actual.data[worst])}, expected ${Number(expected.data[worst])}; ` + message.slice(name.length + 2);
  }
  return { ok, maxAbs, maxRel, worst, message };
}

/** ava assertion: passes when every element is close; the message names the worst element. */
export function assertClose(t: ExecutionContext, actual: Tensor | BundleEntry | Values, expected: Tensor | BundleEntry | Values, opts: CloseOptions = {}): CloseReport {
  const report = compareClose(actual, expected, opts);
  if (report.ok) {
    if (opts.atol !== 0 || opts.rtol !== 0) t.log(report.message); // the achieved error, shown with --verbose
    t.pass();
  } else {
    t.fail(report.message);
  }
  return report;
}
