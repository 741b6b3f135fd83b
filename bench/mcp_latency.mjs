// bench/mcp_latency.mjs: the official TypeScript SDK client's side of bench/mcp_latency:
// N sequential tools/call round trips over stdio to the same server, after a warm-up.
// Usage: node mcp_latency.mjs SDK-DIR CALLS SERVER [ARGS...]; prints "<µs per call>".
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const [sdkDir, callsText, command, ...args] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(path.join(sdkDir, 'dist/esm', p)).href);
const { Client } = await load('client/index.js');
const { StdioClientTransport } = await load('client/stdio.js');

const client = new Client({ name: 'bench', version: '1.0.0' });
await client.connect(new StdioClientTransport({ command, args }));
const calls = Number(callsText);
const call = () => client.callTool({ name: 'echo', arguments: { message: 'ping' } });
for (let i = 0; i < 200; i++) await call();
const start = process.hrtime.bigint();
for (let i = 0; i < calls; i++) await call();
const elapsed = Number(process.hrtime.bigint() - start) / 1000;
console.log((elapsed / calls).toFixed(2));
await client.close();
