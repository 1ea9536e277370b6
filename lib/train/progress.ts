/**
 * Progress of a training run on stderr: a live bar (cli-progress) with epoch, step, loss components,
 * learning rate, images per second and ETA when stderr is a terminal; plain periodic lines otherwise
 * (logs, CI); nothing with 'none'.
 */
import { Presets, SingleBar } from 'cli-progress';

export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';

export interface ProgressValues {
  epoch: number;
  epochs: number;
  loss: number;
  cls: number;
  reg: number;
  lr: number;
  imagesPerSecond: number;
}

const fmt = (v: number) => (!Number.isFinite(v) ? '-' : Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(4) : v.toExponential(2));

export class Progress {
  private readonly mode: Exclude<ProgressMode, 'auto'>;
  private bar?: SingleBar;
  private readonly every: number;
  private started = Date.now();
  private readonly stream: NodeJS.WriteStream;

  constructor(mode: ProgressMode, stepsPerEpoch: number, stream: NodeJS.WriteStream = process.stderr) {
    this.stream = stream;
    this.mode = mode === 'auto' ? (stream.isTTY ? 'bar' : 'lines') : mode;
    this.every = Math.max(1, Math.round(stepsPerEpoch / 5));
  }

  startEpoch(total: number, start: number, v: ProgressValues): void {
    this.started = Date.now();
    if (this.mode !== 'bar') return;
    this.bar?.stop();
    this.bar = new SingleBar(
      {
        format: 'epoch {ep} |{bar}| {value}/{total} loss {lossf} (cls {clsf} reg {regf}) lr {lrf} {ips} img/s ETA {eta_formatted}',
        stream: this.stream,
        hideCursor: true,
        etaBuffer: 20,
        fps: 5,
      },
      Presets.shades_classic,
    );
    this.bar.start(total, start, this.payload(v));
  }

  update(done: number, total: number, v: ProgressValues): void {
    if (this.mode === 'bar') this.bar?.update(done, this.payload(v));
    else if (this.mode === 'lines' && (done % this.every === 0 || done === total)) {
      const eta = ((Date.now() - this.started) / Math.max(1, done)) * (total - done) / 1000;
      this.stream.write(`epoch ${v.epoch + 1}/${v.epochs} step ${done}/${total} loss ${fmt(v.loss)} (cls ${fmt(v.cls)} reg ${fmt(v.reg)}) lr ${fmt(v.lr)} ${v.imagesPerSecond.toFixed(1)} img/s ETA ${eta.toFixed(0)} s\n`);
    }
  }

  /** A line of its own (between bars). */
  log(line: string): void {
    if (this.mode === 'none') return;
    this.stopBar();
    this.stream.write(line + '\n');
  }

  stopBar(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  private payload(v: ProgressValues): Record<string, string> {
    return { ep: `${v.epoch + 1}/${v.epochs}`, lossf: fmt(v.loss), clsf: fmt(v.cls), regf: fmt(v.reg), lrf: fmt(v.lr), ips: v.imagesPerSecond.toFixed(1) };
  }
}
