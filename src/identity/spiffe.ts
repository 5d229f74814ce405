// identity/spiffe.ts: SPIFFE IDs: parsing, formatting and the Istio-shaped
// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` constructor. Pure functions;
// it must not do I/O or look at certificates.

/** Longest trust domain the SPIFFE spec allows. */
export const MAX_TRUST_DOMAIN_LENGTH = 255;
/** Longest SPIFFE ID (as a URI) the SPIFFE spec allows, in bytes. */
export const MAX_SPIFFE_ID_LENGTH = 2048;
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

const SCHEME = 'spiffe://';
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_CHARS = /^[A-Za-z0-9._-]+$/;

/** A parsed, valid SPIFFE ID. */
export interface SpiffeId {
  readonly trustDomain: string;
  /** `/seg/seg...`, or '' for a trust-domain ID (which is never a workload identity). */
  readonly path: string;
  /** The canonical URI, `spiffe://<trustDomain><path>`; use it as a map key. */
  readonly uri: string;
  /** Set when the path has Istio's shape `/ns/<namespace>/sa/<service-account>`. */
  readonly namespace?: string;
  readonly serviceAccount?: string;
}

/** A string that is not a valid SPIFFE ID (or trust domain / path segment), and why. */
export class InvalidSpiffeIdError extends Error {
  override readonly name = 'InvalidSpiffeIdError';
  constructor(
    readonly input: string,
    readonly reason: string,
  ) {
    super(`invalid SPIFFE ID ${JSON.stringify(input)}: ${reason}`);
  }
}

/** Why `td` is not a valid SPIFFE trust domain, or undefined when it is one. */
export function trustDomainProblem(td: string): string | undefined {
  if (td === '') return 'trust domain is empty';
  if (td.length > MAX_TRUST_DOMAIN_LENGTH)
    return `trust domain is longer than ${MAX_TRUST_DOMAIN_LENGTH} characters`;
  if (!TRUST_DOMAIN_CHARS.test(td))
    return 'trust domain characters are limited to lowercase letters, digits, dots, dashes and underscores';
  return undefined;
}

export function isValidTrustDomain(td: string): boolean {
  return trustDomainProblem(td) === undefined;
}

/** Why `seg` is not a valid SPIFFE path segment, or undefined when it is one. */
export function pathSegmentProblem(seg: string): string | undefined {
  if (seg === '') return 'path cannot contain empty segments';
  if (seg === '.' || seg === '..') return 'path cannot contain dot segments';
  if (!PATH_SEGMENT_CHARS.test(seg))
    return 'path segment characters are limited to letters, digits, dots, dashes and underscores';
  return undefined;
}

/** Parses a SPIFFE ID per the SPIFFE spec; throws InvalidSpiffeIdError with the reason. */
export function parseSpiffeId(input: string): SpiffeId {
  const fail = (reason: string): never => {
    throw new InvalidSpiffeIdError(input, reason);
  };
  if (input === '') fail('empty');
  if (Buffer.byteLength(input) > MAX_SPIFFE_ID_LENGTH)
    fail(`longer than ${MAX_SPIFFE_ID_LENGTH} bytes`);
  if (!input.startsWith(SCHEME)) fail('scheme must be "spiffe://" (lowercase)');
  const rest = input.slice(SCHEME.length);
  if (rest.includes('?')) fail('query is not allowed');
  if (rest.includes('#')) fail('fragment is not allowed');
  const slash = rest.indexOf('/');
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
  const path = slash === -1 ? '' : rest.slice(slash);
  if (trustDomain === '') fail('trust domain is missing');
  if (trustDomain.includes('@')) fail('user info is not allowed');
  if (trustDomain.includes(':')) fail('port is not allowed');
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== undefined) fail(tdProblem);
  if (path !== '') {
    if (path === '/' || path.endsWith('/')) fail('path cannot have a trailing slash');
    for (const seg of path.slice(1).split('/')) {
      const problem = pathSegmentProblem(seg);
      if (problem !== undefined) fail(problem);
    }
  }
  return makeId(trustDomain, path);
}

/** parseSpiffeId without the throw: the ID, or the error describing why it is invalid. */
export function tryParseSpiffeId(input: string): SpiffeId | InvalidSpiffeIdError {
  try {
    return parseSpiffeId(input);
  } catch (err) {
    if (err instanceof InvalidSpiffeIdError) return err;
    throw err;
  }
}

/** `spiffe://<trustDomain><path>`. */
export function formatSpiffeId(id: Pick<SpiffeId, 'trustDomain' | 'path'>): string {
  return `${SCHEME}${id.trustDomain}${id.path}`;
}

/** The Istio-shaped workload ID `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`. */
export function spiffeIdFor(
  trustDomain: string,
  namespace: string,
  serviceAccount: string,
): SpiffeId {
  const path = `/ns/${namespace}/sa/${serviceAccount}`;
  const input = `${SCHEME}${trustDomain}${path}`;
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== undefined) throw new InvalidSpiffeIdError(input, tdProblem);
  for (const [what, seg] of [
    ['namespace', namespace],
    ['service account', serviceAccount],
  ] as const) {
    const problem = pathSegmentProblem(seg);
    if (problem !== undefined) throw new InvalidSpiffeIdError(input, `${what}: ${problem}`);
  }
  return makeId(trustDomain, path);
}

/** Accepts an ID or its URI string (parsed, so an invalid string throws). */
export function toSpiffeId(id: SpiffeId | string): SpiffeId {
  return typeof id === 'string' ? parseSpiffeId(id) : id;
}

/** Istio's principal form of an ID: `<trust-domain>/ns/<ns>/sa/<sa>` (the URI minus scheme). */
export function principalOf(id: SpiffeId): string {
  return `${id.trustDomain}${id.path}`;
}

function makeId(trustDomain: string, path: string): SpiffeId {
  const uri = formatSpiffeId({ trustDomain, path });
  const m = /^\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(path);
  return m === null
    ? { trustDomain, path, uri }
    : { trustDomain, path, uri, namespace: m[1], serviceAccount: m[2] };
}
