/**
 * `onestage serve-demo`: serves the web page of examples/web/ with an exported ONNX model, onnxruntime-web's
 * files from node_modules, and the model's metadata as JSON (the page reads class names and input size
 * from it). Local use only: binds 127.0.0.1 by default, serves nothing outside these three places.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { onnx } from 'onnx-proto';

export interface ServeDemoOptions {
  /** The exported model (.onnx). */
  model: string;
  /** Port; default 8080 (0: any free port). */
  port?: number;
  host?: string;
}

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm', '.json': 'application/json', '.onnx': 'application/octet-stream', '.png': 'image/png' };

/** The metadata_props of an ONNX file, and its input's dims (numbers or names). */
export function readOnnxMetadata(file: string): { metadata: Record<string, string>; input: Array<number | string> } {
  let m: onnx.ModelProto;
  try {
    m = onnx.ModelProto.decode(fs.readFileSync(file));
  } catch (err) {
    throw new Error(`${file} is not an ONNX model: ${(err as Error).message}`);
  }
  const dims = m.graph?.input?.[0]?.type?.tensorType?.shape?.dim ?? [];
  return { metadata: Object.fromEntries(m.metadataProps.map((p) => [p.key ?? '', p.value ?? ''])), input: dims.map((d) => (d.dimParam ? d.dimParam : Number(d.dimValue))) };
}

export async function serveDemo(o: ServeDemoOptions): Promise<{ url: string; close: () => Promise<void> }> {
  const model = path.resolve(o.model);
  if (!fs.existsSync(model)) throw new Error(`serve-demo: no model at ${o.model} (export one with: onestage export --weights W --onnx ${o.model})`);
  const info = readOnnxMetadata(model);
  const page = path.resolve(__dirname, '..', '..', 'examples', 'web');
  const ortDist = path.dirname(require.resolve('onnxruntime-web'));
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    let file: string | null = null;
    if (url.pathname === '/model.onnx') file = model;
    else if (url.pathname === '/model.json') {
      res.writeHead(200, { 'content-type': TYPES['.json'] });
      res.end(JSON.stringify(info));
      return;
    } else if (url.pathname.startsWith('/ort/')) file = path.join(ortDist, path.basename(url.pathname));
    else file = path.join(page, path.basename(url.pathname === '/' ? 'index.html' : url.pathname));
    fs.readFile(file, (err, data) => {
      if (err) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end(`not found: ${url.pathname}`);
        return;
      }
      res.writeHead(200, { 'content-type': TYPES[path.extname(file!)] ?? 'application/octet-stream' });
      res.end(data);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 8080, o.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as { port: number };
  return { url: `http://${o.host ?? '127.0.0.1'}:${addr.port}/`, close: () => new Promise((r) => server.close(() => r())) };
}
