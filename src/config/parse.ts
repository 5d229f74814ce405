// config/parse.ts: turns YAML/JSON text into documents that remember where each field was
// written, so validation errors can name a file and line. It knows nothing about Kubernetes
// kinds; it must not validate objects, log, or touch the kernel or the network.

import { isAlias, isMap, isScalar, isSeq, LineCounter, parseAllDocuments } from 'yaml';
import type { Document, Node as YamlNode } from 'yaml';
import { ConfigError, type FieldPath } from './errors.js';

export interface ParsedDocument {
  /** 0-based position of the document in its file. */
  readonly index: number;
  /** The document as plain JS (null for an empty document). */
  readonly value: unknown;
  /**
   * 1-based line where the field at `path` is written (its key), or of the nearest ancestor
   * that exists when the field is missing; the document's first line for `[]`.
   */
  lineOf(path: FieldPath): number | undefined;
}

export interface ParseResult {
  readonly documents: readonly ParsedDocument[];
  /** YAML syntax errors. When non-empty, treat the whole file as unreadable. */
  readonly errors: readonly ConfigError[];
}

/** Aliases may expand to at most this many nodes per document (a billion-laughs guard). */
const MAX_ALIAS_COUNT = 100;

export function parseManifests(text: string, file?: string): ParseResult {
  const lineCounter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const lineAt = (offset: number): number => lineCounter.linePos(offset).line;
  const documents: ParsedDocument[] = [];
  const errors: ConfigError[] = [];
  const located = (line: number | undefined, message: string): ConfigError =>
    new ConfigError({
      ...(file !== undefined && { file }),
      ...(line !== undefined && { line }),
      message,
    });

  docs.forEach((doc, index) => {
    for (const e of doc.errors) {
      errors.push(located(lineAt(e.pos[0]), `YAML syntax error: ${firstLine(e.message)}`));
    }
    if (doc.errors.length > 0) return;
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (err) {
      const start = doc.contents?.range[0] ?? doc.range[0];
      errors.push(located(lineAt(start), `YAML error: ${firstLine(String(err))}`));
      return;
    }
    documents.push({ index, value, lineOf: (path) => lineOf(doc, path, lineAt) });
  });
  return { documents, errors };
}

function firstLine(message: string): string {
  return message.split('\n')[0]!.trim();
}

function lineOf(
  doc: Document.Parsed,
  path: FieldPath,
  lineAt: (offset: number) => number,
): number | undefined {
  let node: unknown = doc.contents;
  const start = (n: unknown): number | undefined => {
    const range = (n as YamlNode | null)?.range;
    return range ? lineAt(range[0]) : undefined;
  };
  let line = start(node) ?? lineAt(doc.range[0]);
  for (const seg of path) {
    if (isAlias(node)) node = node.resolve(doc);
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) return line;
      line = start(pair.key) ?? start(pair.value) ?? line;
      node = pair.value;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg];
      if (item === undefined) return line;
      line = start(item) ?? line;
      node = item;
    } else {
      return line;
    }
  }
  return line;
}
