/**
 * Training plots: loss curves (every step, thinned, and per-epoch means) and validation AP over
 * epochs, as Vega-Lite charts rendered to SVG by Vega (headless, no browser) and rasterised to PNG
 * by sharp. Files are written atomically.
 */
import sharp from 'sharp';
import { writeFileAtomic } from '../io';

// vega and vega-lite are ES modules with top-level await: loaded with a real dynamic import
const importEsm = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<unknown>;

interface VegaModules {
  vega: { View: new (runtime: unknown, options: { renderer: 'none' }) => { toSVG(): Promise<string>; finalize(): void }; parse(spec: unknown): unknown };
  vegaLite: { compile(spec: unknown): { spec: unknown } };
}
let modules: Promise<VegaModules> | undefined;
function loadVega(): Promise<VegaModules> {
  modules ??= Promise.all([importEsm('vega'), importEsm('vega-lite')]).then(([vega, vegaLite]) => ({ vega, vegaLite }) as VegaModules);
  return modules;
}

export interface Series {
  /** Curve name (legend). */
  name: string;
  points: Array<[number, number]>;
}

export interface ChartOptions {
  title: string;
  xTitle: string;
  yTitle: string;
  /** Logarithmic y axis; default false. */
  logY?: boolean;
  /** Fixed y range. */
  yDomain?: [number, number];
  width?: number;
  height?: number;
}

/** A line chart of several series as SVG text. */
export async function lineChartSvg(series: Series[], o: ChartOptions): Promise<string> {
  const { vega, vegaLite } = await loadVega();
  const values = series.flatMap((s) => s.points.filter(([, y]) => Number.isFinite(y) && (!o.logY || y > 0)).map(([x, y]) => ({ x, y, series: s.name })));
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: o.title,
    width: o.width ?? 560,
    height: o.height ?? 300,
    background: 'white',
    data: { values },
    mark: { type: 'line', strokeWidth: 1.5, point: values.length < 60 },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: o.xTitle },
      y: { field: 'y', type: 'quantitative', title: o.yTitle, scale: { ...(o.logY ? { type: 'log' } : { zero: false }), ...(o.yDomain ? { domain: o.yDomain } : {}) } },
      color: { field: 'series', type: 'nominal', title: null, sort: series.map((s) => s.name) },
    },
  };
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Writes `<base>.svg` and `<base>.png` (2× scale) of a line chart. */
export async function writeLineChart(base: string, series: Series[], o: ChartOptions): Promise<void> {
  const svg = await lineChartSvg(series, o);
  const png = await sharp(Buffer.from(svg), { density: 144 }).png().toBuffer();
  writeFileAtomic(`${base}.svg`, svg);
  writeFileAtomic(`${base}.png`, png);
}

/** At most `max` points, evenly spaced (always keeping the last). */
export function thin<T>(points: T[], max: number): T[] {
  if (points.length <= max) return points;
  const step = points.length / max;
  const out: T[] = [];
  for (let i = 0; i < max - 1; i++) out.push(points[Math.floor(i * step)]);
  out.push(points[points.length - 1]);
  return out;
}

/** Exponential moving average of a curve (smoothing factor `alpha` per point, debiased). */
export function smooth(points: Array<[number, number]>, alpha = 0.1): Array<[number, number]> {
  let m = 0;
  let w = 0;
  return points.map(([x, y]) => {
    m = (1 - alpha) * m + alpha * y;
    w = (1 - alpha) * w + alpha;
    return [x, m / w];
  });
}
