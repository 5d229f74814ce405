// Typed access to BPF maps: fixed-size codecs for keys and values, and map operations that
// throw KernelError. The layouts mirror bpf/weft_maps.h; change both together.
import { check } from './errors.js';
import { libbpf } from './ffi.js';

export interface Codec<T> {
  readonly size: number;
  encode(value: T, into: Buffer): void;
  decode(from: Buffer): T;
}

export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

const ENOENT = 2;

/** An IPv4 address as a u32 in network byte order, written as the dotted string. */
export const ipv4Codec: Codec<string> = {
  size: 4,
  encode(value, into) {
    const parts = value.split('.');
    if (parts.length !== 4) throw new Error(`not an IPv4 address: ${value}`);
    parts.forEach((part, i) => {
      const octet = Number(part);
      if (!/^\d{1,3}$/.test(part) || octet > 255) throw new Error(`not an IPv4 address: ${value}`);
      into[i] = octet;
    });
  },
  decode(from) {
    return `${from[0]}.${from[1]}.${from[2]}.${from[3]}`;
  },
};

export const u32Codec: Codec<number> = {
  size: 4,
  encode: (value, into) => into.writeUInt32LE(value >>> 0, 0),
  decode: (from) => from.readUInt32LE(0),
};

export const u64Codec: Codec<bigint> = {
  size: 8,
  encode: (value, into) => into.writeBigUInt64LE(value, 0),
  decode: (from) => from.readBigUInt64LE(0),
};

/** A struct of consecutive little-endian u32 fields, in declaration order. */
export function u32StructCodec<T extends Record<string, number>>(
  fields: readonly (keyof T & string)[],
): Codec<T> {
  return {
    size: fields.length * 4,
    encode(value, into) {
      fields.forEach((field, i) => into.writeUInt32LE(value[field]! >>> 0, i * 4));
    },
    decode(from) {
      const out: Record<string, number> = {};
      fields.forEach((field, i) => (out[field] = from.readUInt32LE(i * 4)));
      return out as T;
    },
  };
}

/** A struct of consecutive little-endian u64 counters, in declaration order. */
export function u64StructCodec<T extends Record<string, bigint>>(
  fields: readonly (keyof T & string)[],
): Codec<T> {
  return {
    size: fields.length * 8,
    encode(value, into) {
      fields.forEach((field, i) => into.writeBigUInt64LE(value[field]!, i * 8));
    },
    decode(from) {
      const out: Record<string, bigint> = {};
      fields.forEach((field, i) => (out[field] = from.readBigUInt64LE(i * 8)));
      return out as T;
    },
  };
}

export class TypedMap<K, V> {
  constructor(
    readonly name: string,
    readonly fd: number,
    protected readonly keyCodec: Codec<K>,
    protected readonly valueCodec: Codec<V>,
  ) {}

  set(key: K, value: V, flags = BPF_ANY): void {
    const k = this.encodeKey(key);
    const v = Buffer.alloc(this.valueCodec.size);
    this.valueCodec.encode(value, v);
    check(libbpf.mapUpdate(this.fd, k, v, flags), `update ${this.name}[${describeKey(key)}]`);
  }

  get(key: K): V | undefined {
    const raw = this.lookupRaw(key, this.valueCodec.size);
    return raw && this.valueCodec.decode(raw);
  }

  /** Returns false when the key was absent. */
  delete(key: K): boolean {
    const result = libbpf.mapDelete(this.fd, this.encodeKey(key));
    if (result === -ENOENT) return false;
    check(result, `delete ${this.name}[${describeKey(key)}]`);
    return true;
  }

  keys(limit = 1_000_000): K[] {
    return [...this.rawKeys(limit)].map((raw) => this.keyCodec.decode(raw));
  }

  /** Every entry, read one by one (an entry deleted meanwhile is skipped). */
  entries(limit = 1_000_000): [K, V][] {
    const entries: [K, V][] = [];
    for (const raw of this.rawKeys(limit)) {
      const out = Buffer.alloc(this.valueCodec.size);
      const found = libbpf.mapLookup(this.fd, raw, out);
      if (found === -ENOENT) continue;
      check(found, `lookup ${this.name}`);
      entries.push([this.keyCodec.decode(raw), this.valueCodec.decode(out)]);
    }
    return entries;
  }

  /** The map's keys as raw buffers, at most `limit` of them. */
  private *rawKeys(limit: number): Generator<Buffer> {
    let previous: Buffer | null = null;
    for (let i = 0; i < limit; i++) {
      const next = Buffer.alloc(this.keyCodec.size);
      const result = libbpf.mapNextKey(this.fd, previous, next);
      if (result === -ENOENT) return;
      check(result, `iterate ${this.name}`);
      yield next;
      previous = next;
    }
  }

  protected encodeKey(key: K): Buffer {
    const k = Buffer.alloc(this.keyCodec.size);
    this.keyCodec.encode(key, k);
    return k;
  }

  protected lookupRaw(key: K, size: number): Buffer | undefined {
    const out = Buffer.alloc(size);
    const result = libbpf.mapLookup(this.fd, this.encodeKey(key), out);
    if (result === -ENOENT) return undefined;
    check(result, `lookup ${this.name}[${describeKey(key)}]`);
    return out;
  }
}

/** A per-CPU map read back as the sum over CPUs of each u64 field. */
export class PerCpuCounterMap<K, V extends Record<string, bigint>> extends TypedMap<K, V> {
  constructor(
    name: string,
    fd: number,
    keyCodec: Codec<K>,
    private readonly fields: readonly (keyof V & string)[],
    private readonly cpus: number,
  ) {
    super(name, fd, keyCodec, u64StructCodec<V>(fields));
  }

  override get(key: K): V | undefined {
    const stride = Math.ceil(this.valueCodec.size / 8) * 8;
    const raw = this.lookupRaw(key, stride * this.cpus);
    if (!raw) return undefined;
    const sum: Record<string, bigint> = Object.fromEntries(this.fields.map((f) => [f, 0n]));
    for (let cpu = 0; cpu < this.cpus; cpu++) {
      const value = this.valueCodec.decode(raw.subarray(cpu * stride, cpu * stride + stride));
      for (const field of this.fields) sum[field]! += value[field];
    }
    return sum as V;
  }

  override set(): never {
    throw new Error(`${this.name} is written by the BPF program only`);
  }
}

function describeKey(key: unknown): string {
  return typeof key === 'object' && key !== null ? JSON.stringify(key) : String(key);
}
