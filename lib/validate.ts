/**
 * Argument validation at the edge of the public API, sharp style: every message names the
 * argument, what was expected and what was received.
 */

/** `-3 of type number`, `'abc' of type string`, `an array of length 2`, `null`, ... */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  switch (typeof value) {
    case 'string':
      return `'${value.length > 60 ? value.slice(0, 60) + '…' : value}' of type string`;
    case 'number':
    case 'boolean':
    case 'bigint':
      return `${String(value)} of type ${typeof value}`;
    case 'function':
      return 'a function';
    case 'symbol':
      return 'a symbol';
    default:
      return value.constructor && value.constructor !== Object ? `a ${value.constructor.name}` : 'an object';
  }
}

export function invalid(name: string, expected: string, value: unknown, Kind: ErrorConstructor = TypeError): Error {
  return new Kind(`Expected ${expected} for ${name} but received ${describe(value)}`);
}

export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number') throw invalid(name, `an integer between ${min} and ${max}`, value);
  if (!Number.isInteger(value) || value < min || value > max)
    throw invalid(name, `an integer between ${min} and ${max}`, value, RangeError);
  return value;
}

export function checkOneOf<T extends string>(name: string, value: unknown, choices: readonly T[]): T {
  if (typeof value !== 'string') throw invalid(name, `one of ${choices.join(', ')}`, value);
  if (!(choices as readonly string[]).includes(value))
    throw invalid(name, `one of ${choices.join(', ')}`, value, RangeError);
  return value as T;
}

/** Options objects: undefined means defaults; anything but a plain object is a TypeError. */
export function checkOptions<T extends object>(name: string, value: T | undefined): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw invalid(name, 'an object', value);
  return value;
}
