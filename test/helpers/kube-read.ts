// test/helpers/kube-read.ts: run inside a lab namespace that reaches the in-test API server,
// it GETs one API path with a kubeconfig's credentials (its CA, its bearer token) and prints
// the JSON body on stdout (exit 1 on a non-200 answer). The request carries the query
// parameter READER_MARK, so a test reading the server's request log can tell the test's own
// reads from the requests weft made.
//
//   node dist/test/helpers/kube-read.js KUBECONFIG /api/v1/namespaces/default/pods/client
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parse } from 'yaml';

export const READER_MARK = 'weftTestReader';

interface Kubeconfig {
  clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
  users: { user: { token: string } }[];
}

function main(kubeconfigPath: string, path: string): void {
  const kc = parse(readFileSync(kubeconfigPath, 'utf8')) as Kubeconfig;
  const cluster = kc.clusters[0]!.cluster;
  const url = new URL(cluster.server + path);
  url.searchParams.set(READER_MARK, '1');
  const req = request(
    url,
    {
      method: 'GET',
      ca: Buffer.from(cluster['certificate-authority-data'], 'base64'),
      headers: { Authorization: `Bearer ${kc.users[0]!.user.token}`, Accept: 'application/json' },
      timeout: 5000,
    },
    (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        process.stdout.write(Buffer.concat(chunks).toString('utf8'));
        process.exit(res.statusCode === 200 ? 0 : 1);
      });
    },
  );
  req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
  req.on('error', (err) => {
    process.stderr.write(`kube-read: ${err.message}\n`);
    process.exit(1);
  });
  req.end();
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolvePath(process.argv[1])).href) {
  const [kubeconfig, path] = process.argv.slice(2);
  if (!kubeconfig || !path) {
    process.stderr.write('usage: kube-read KUBECONFIG /api/path\n');
    process.exit(2);
  }
  main(kubeconfig, path);
}
