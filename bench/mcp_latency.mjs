// bench/mcp_latency.mjs: the official TypeScript SDK client's side of bench/mcp_latency:
// N tools/call round trips to the same server, after a warm-up, INFLIGHT at once (1: in
// turn), over stdio (SERVER is a command) or Streamable HTTP (SERVER is an http:// URL).
// Usage: node mcp_latency.mjs SDK-DIR CALLS INFLIGHT SERVER [ARGS...]; prints "<µs per call>".
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const [sdkDir, callsText, inflightText, server, ...args] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(path.join(sdkDir, 'dist/esm', p)).href);
const { Client } = await load('client/index.js');

const client = new Client({ name: 'bench', version: '1.0.0' });
if (/^https?:\/\//.test(server)) {
  const { StreamableHTTPClientTransport } = await load('client/streamableHttp.js');
  await client.connect(new StreamableHTTPClientTransport(new URL(server)));
} else {
  const { StdioClientTransport } = await load('client/stdio.js');
  await client.connect(new StdioClientTransport({ command: server, args }));
}
const calls = Number(callsText);
const inflight = Number(inflightText);
const call = () => client.callTool({ name: 'echo', arguments: { message: 'ping' } });
// n calls, inflight workers each making its share in turn.
const run = async (n) => {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      await call();
    }
  };
  await Promise.all(Array.from({ length: Math.min(inflight, n) }, worker));
};
await run(200);
const start = process.hrtime.bigint();
await run(calls);
const elapsed = Number(process.hrtime.bigint() - start) / 1000;
console.log((elapsed / calls).toFixed(2));
await client.close();
