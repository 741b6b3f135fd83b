// validate-messages.mjs: checks that every message troupe's client sent validates against
// the official schema of the protocol version in use (tests/conformance/mcp-schemas/<version>/schema.json,
// copied unchanged into the repository). Input: JSON lines {"version": "...", "message": {...}}.
// Usage: node validate-messages.mjs SPEC-DIR MESSAGES.jsonl; exits 1 on any invalid message.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const Ajv = require('ajv').default;
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const [specDir, file] = process.argv.slice(2);
const validators = new Map();

function validatorsFor(version) {
  if (validators.has(version)) return validators.get(version);
  const schema = JSON.parse(fs.readFileSync(path.join(specDir, version, 'schema.json'), 'utf8'));
  const modern = String(schema.$schema).includes('2020-12');
  const ajv = new (modern ? Ajv2020 : Ajv)({ strict: false, allErrors: true });
  addFormats(ajv);
  const id = `mcp-${version}`;
  ajv.addSchema({ ...schema, $id: id });
  const defs = modern ? '$defs' : 'definitions';
  const get = (name) => ajv.getSchema(`${id}#/${defs}/${name}`);
  const v = {
    request: [get('JSONRPCRequest'), get('ClientRequest')],
    notification: [get('JSONRPCNotification'), get('ClientNotification')],
    result: [get('JSONRPCResultResponse') ?? get('JSONRPCResponse')],
    clientResult: get('ClientResult'),
    error: [get('JSONRPCErrorResponse') ?? get('JSONRPCError')],
  };
  validators.set(version, v);
  return v;
}

let checked = 0;
const failures = [];
for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const { version, message } = JSON.parse(line);
  const v = validatorsFor(version);
  let checks;
  if ('method' in message) checks = 'id' in message ? v.request : v.notification;
  else if ('result' in message) checks = v.result;
  else checks = v.error;
  const errors = [];
  for (const check of checks) {
    if (!check(message)) errors.push(...check.errors.map((e) => `${e.instancePath} ${e.message}`));
  }
  if ('result' in message && v.clientResult && !v.clientResult(message.result))
    errors.push(...v.clientResult.errors.map((e) => `result${e.instancePath} ${e.message}`));
  checked++;
  if (errors.length) failures.push(`[${version}] ${JSON.stringify(message).slice(0, 300)}\n    ${errors.slice(0, 5).join('\n    ')}`);
}
if (failures.length) {
  console.error(`${failures.length} of ${checked} messages are invalid:\n${failures.join('\n')}`);
  process.exit(1);
}
console.log(`${checked} messages valid`);
