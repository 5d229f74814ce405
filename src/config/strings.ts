// config/strings.ts: the strings of the model are kept as compact, shared copies. V8 keeps a
// substring of 13 characters or more as a slice of the string it was cut from, so a pod name
// read from a manifest would hold the whole file's text in memory (12 MB for a 10,000-pod
// cluster of files), and a value read from an API response the whole response; and values
// such as `Running`, `TCP` or a namespace name would be stored once per object. ownString()
// returns a flat copy shared with equal strings seen before. The table is bounded and simply
// starts over when full, so it never changes a value, only how often it is stored. It must
// not be used for anything but memory.

/** Distinct strings kept before the table starts over. */
const MAX_STRINGS = 65_536;
let table = new Map<string, string>();

/** `s` as a flat string that references no other string, shared with equal strings. */
export function ownString(s: string): string {
  const known = table.get(s);
  if (known !== undefined) return known;
  // Concatenating forces a flat copy when the result is sliced (13 characters or more); the
  // slice of that copy references only the copy. Shorter strings are already copies.
  const own = s.length < 13 ? s : (' ' + s).slice(1);
  if (table.size >= MAX_STRINGS) table = new Map();
  table.set(own, own);
  return own;
}
