/**
 * A small ONNX graph builder: named values, initializers, nodes and typed inputs/outputs, serialised
 * with the ONNX protobuf schema of the `onnx-proto` package. The exporter (./export.ts) builds every
 * layer with it; nothing here knows about detectors.
 */
import { onnx } from 'onnx-proto';

/** Element types the exporter uses (ONNX TensorProto.DataType). */
export const DTYPE = { float: 1, uint8: 2, int32: 6, int64: 7, bool: 9, double: 11 } as const;
export type DType = keyof typeof DTYPE;

/** A dimension: a fixed size or a symbolic name (dynamic). */
export type Dim = number | string;

export type AttributeValue = number | number[] | string | { ints: number[] } | { floats: number[] } | { int: number } | { float: number };

/** Opsets whose operator semantics, as the exporter uses them, are identical (Unsqueeze/ReduceSum axes as inputs from 13; Resize, TopK, NonMaxSuppression unchanged in what is used). */
export const MIN_OPSET = 13;
export const MAX_OPSET = 21;

function bytesOf(data: Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array): Uint8Array {
  // protobuf raw_data is little-endian; so is every platform Node runs on
  return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
}

export class OnnxGraph {
  private readonly nodes: onnx.INodeProto[] = [];
  private readonly initializers: onnx.ITensorProto[] = [];
  private readonly inputs: onnx.IValueInfoProto[] = [];
  private readonly outputs: onnx.IValueInfoProto[] = [];
  private readonly names = new Set<string>();
  private readonly constCache = new Map<string, string>();
  private counter = 0;
  /** Operator types used, with their counts (for the README and tests). */
  readonly opCounts = new Map<string, number>();

  /** A fresh value name with this stem (`stem`, `stem_1`, …). */
  name(stem: string): string {
    let n = stem;
    while (this.names.has(n)) n = `${stem}_${++this.counter}`;
    this.names.add(n);
    return n;
  }

  input(name: string, dtype: DType, dims: Dim[]): string {
    const n = this.name(name);
    if (n !== name) throw new Error(`ONNX graph: input name '${name}' is taken`);
    this.inputs.push(valueInfo(n, dtype, dims));
    return n;
  }

  /** Marks `value` as a graph output under `name` (an Identity node when the names differ). */
  output(value: string, name: string, dtype: DType, dims: Dim[]): void {
    let v = value;
    if (v !== name) {
      if (this.names.has(name)) throw new Error(`ONNX graph: output name '${name}' is taken`);
      this.names.add(name);
      this.nodes.push({ opType: 'Identity', input: [value], output: [name], name: `${name}/Identity` });
      this.count('Identity');
      v = name;
    }
    this.outputs.push(valueInfo(v, dtype, dims));
  }

  /** An initializer (weights): float32 by default. */
  tensor(stem: string, data: Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array, dims: number[], dtype?: DType): string {
    const n = this.name(stem);
    const type: DType = dtype ?? (data instanceof Float64Array ? 'double' : data instanceof BigInt64Array ? 'int64' : data instanceof Int32Array ? 'int32' : data instanceof Uint8Array ? 'uint8' : 'float');
    const size = dims.reduce((a, b) => a * b, 1);
    if (size !== data.length) throw new Error(`ONNX graph: initializer ${stem} has ${data.length} values for dims [${dims.join(', ')}]`);
    this.initializers.push({ name: n, dataType: DTYPE[type], dims, rawData: bytesOf(data) });
    return n;
  }

  /** A shared constant: int64 (`ints`), float32 (`floats`) or double; a scalar when `dims` is []. */
  int64(values: number[], dims: number[] = [values.length]): string {
    return this.cached('i64', values, dims, () => this.tensor('const_i64', BigInt64Array.from(values.map((v) => BigInt(v))), dims));
  }
  float(values: number[], dims: number[] = [values.length]): string {
    return this.cached('f32', values, dims, () => this.tensor('const_f32', Float32Array.from(values), dims));
  }
  double(values: number[], dims: number[] = [values.length]): string {
    return this.cached('f64', values, dims, () => this.tensor('const_f64', Float64Array.from(values), dims));
  }
  private cached(kind: string, values: number[], dims: number[], make: () => string): string {
    const key = `${kind}:${dims.join('x')}:${values.join(',')}`;
    let n = this.constCache.get(key);
    if (!n) {
      n = make();
      this.constCache.set(key, n);
    }
    return n;
  }

  /** A node with one output; returns its name. */
  op(opType: string, inputs: string[], attrs: Record<string, AttributeValue> = {}, stem?: string): string {
    return this.opN(opType, inputs, 1, attrs, stem)[0];
  }

  /** A node with `outputs` outputs. */
  opN(opType: string, inputs: string[], outputs: number, attrs: Record<string, AttributeValue> = {}, stem?: string): string[] {
    const base = this.name(stem ?? opType.toLowerCase());
    const outs = [base, ...Array.from({ length: outputs - 1 }, (_, i) => this.name(`${base}_out${i + 1}`))];
    this.nodes.push({ opType, input: inputs, output: outs, name: `${base}/${opType}`, attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)) });
    this.count(opType);
    return outs;
  }

  private count(op: string): void {
    this.opCounts.set(op, (this.opCounts.get(op) ?? 0) + 1);
  }

  /** The serialised ModelProto. */
  encode(o: { opset: number; graphName: string; producerVersion: string; metadata: Record<string, string>; docString?: string }): Uint8Array {
    const model: onnx.IModelProto = {
      irVersion: 8,
      producerName: 'onestage',
      producerVersion: o.producerVersion,
      docString: o.docString,
      opsetImport: [{ domain: '', version: o.opset }],
      metadataProps: Object.entries(o.metadata).map(([key, value]) => ({ key, value })),
      graph: { name: o.graphName, node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs },
    };
    return onnx.ModelProto.encode(onnx.ModelProto.fromObject(model)).finish();
  }
}

function valueInfo(name: string, dtype: DType, dims: Dim[]): onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType: DTYPE[dtype], shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function attribute(name: string, v: AttributeValue): onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (typeof v === 'number') return Number.isInteger(v) ? { name, type: T.INT, i: v } : { name, type: T.FLOAT, f: v };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('ints' in v) return { name, type: T.INTS, ints: v.ints };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  if ('int' in v) return { name, type: T.INT, i: v.int };
  return { name, type: T.FLOAT, f: v.float };
}
