// A small parser for the Prometheus text exposition format (0.0.4), enough for tests: one
// sample per `name{label="value",...} value [timestamp]` line, comments and blank lines
// skipped, label values unescaped (\\, \", \n).

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

function parseValue(text: string): number {
  // Case-insensitive, as Prometheus's own parser (strconv.ParseFloat): prom-client writes "Nan".
  const lower = text.toLowerCase();
  if (lower === '+inf' || lower === 'inf') return Infinity;
  if (lower === '-inf') return -Infinity;
  if (lower === 'nan') return NaN;
  const n = Number(text);
  if (text === '' || Number.isNaN(n))
    throw new Error(`not a sample value: ${JSON.stringify(text)}`);
  return n;
}

/** Parses the whole exposition; throws on a line that is not a comment, blank or a sample. */
export function parsePrometheus(text: string): Sample[] {
  const out: Sample[] = [];
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    if (!name) throw new Error(`line ${index + 1}: no metric name: ${line}`);
    let i = name.length;
    const labels: Record<string, string> = {};
    if (line[i] === '{') {
      i++;
      for (;;) {
        while (line[i] === ' ' || line[i] === ',') i++;
        if (line[i] === '}') {
          i++;
          break;
        }
        const key = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i))?.[0];
        if (!key || line[i + key.length] !== '=' || line[i + key.length + 1] !== '"')
          throw new Error(`line ${index + 1}: bad label at column ${i}: ${line}`);
        i += key.length + 2;
        let value = '';
        for (;;) {
          const c = line[i];
          if (c === undefined) throw new Error(`line ${index + 1}: unterminated label value`);
          i++;
          if (c === '"') break;
          if (c === '\\') {
            const e = line[i++];
            value += e === 'n' ? '\n' : (e ?? '');
          } else {
            value += c;
          }
        }
        labels[key] = value;
      }
    }
    const rest = line.slice(i).trim().split(/\s+/);
    if (rest.length < 1 || rest.length > 2)
      throw new Error(`line ${index + 1}: expected a value (and timestamp): ${line}`);
    out.push({ name, labels, value: parseValue(rest[0]!) });
  }
  return out;
}

/** The samples named `name` whose labels include every pair of `match`. */
export function select(
  samples: readonly Sample[],
  name: string,
  match: Readonly<Record<string, string>> = {},
): Sample[] {
  return samples.filter(
    (s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v),
  );
}
