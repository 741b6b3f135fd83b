#!/usr/bin/env node
// Checks an OTLP JSON export (`troupe audit export RUN --format otlp`) two ways:
//  - against the official OpenTelemetry protobuf definitions (ExportTraceServiceRequest, as
//    generated from opentelemetry-proto in @opentelemetry/otlp-transformer), under the OTLP/JSON
//    mapping: lowerCamelCase field names, trace and span ids as hex, 64-bit integers as decimal
//    strings, enums as integers. The document must survive a round trip through the protobuf
//    encoding unchanged: an unknown field, a wrong type or a misspelt name does not;
//  - against what a trace must be: span ids unique, one root, every parent present, every span
//    timed and within its parent, an error status with its message.
// Prints a summary as JSON; exits 1 naming the first problem.
'use strict';
const root = require('@opentelemetry/otlp-transformer/build/src/generated/root');
const fs = require('fs');
const assert = require('assert');

const Req = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const text = fs.readFileSync(process.argv[2], 'utf8');
const doc = JSON.parse(text);

function fail(why) {
  console.error('invalid OTLP export: ' + why);
  process.exit(1);
}

// OTLP/JSON encodes ids as hex where plain proto3 JSON has base64: checked, then converted.
const ID_BYTES = {traceId: 16, spanId: 8, parentSpanId: 8};
function idsToBase64(node, where) {
  if (Array.isArray(node)) return node.map((v, i) => idsToBase64(v, `${where}[${i}]`));
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    if (ID_BYTES[k] !== undefined) {
      const hex = new RegExp(`^[0-9a-f]{${2 * ID_BYTES[k]}}$`);
      if (typeof v !== 'string' || !hex.test(v)) fail(`${where}.${k} is not ${ID_BYTES[k]} bytes in hex: ${JSON.stringify(v)}`);
      if (/^0+$/.test(v)) fail(`${where}.${k} is all zeros`);
      out[k] = Buffer.from(v, 'hex').toString('base64');
    } else {
      out[k] = idsToBase64(v, `${where}.${k}`);
    }
  }
  return out;
}

// proto3 leaves default values off the wire: what the round trip cannot give back. The members
// of a oneof (AnyValue's) are kept whatever their value.
const ONEOF = new Set(['stringValue', 'boolValue', 'intValue', 'doubleValue', 'arrayValue', 'kvlistValue', 'bytesValue']);
function withoutDefaults(node) {
  if (Array.isArray(node)) return node.map(withoutDefaults);
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) {
    const zero = v === 0 || v === '0' || v === '' || v === false || (Array.isArray(v) && v.length === 0);
    if (zero && !ONEOF.has(k)) continue;
    out[k] = withoutDefaults(v);
  }
  return out;
}

function firstDifference(a, b, where) {
  if (typeof a !== typeof b || Array.isArray(a) !== Array.isArray(b) || (a === null) !== (b === null))
    return `${where}: ${JSON.stringify(a)} comes back as ${JSON.stringify(b)}`;
  if (a === null || typeof a !== 'object') return a === b ? null : `${where}: ${JSON.stringify(a)} comes back as ${JSON.stringify(b)}`;
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) {
    if (!(k in b)) return `${where}.${k} is not a field of the protobuf message (or not of this type)`;
    if (!(k in a)) return `${where}.${k} appears from nowhere`;
    const d = firstDifference(a[k], b[k], `${where}.${k}`);
    if (d) return d;
  }
  return null;
}

// ---- the protobuf definitions ------------------------------------------------------------------
const converted = idsToBase64(doc, '$');
let message;
try {
  message = Req.fromObject(converted);
} catch (e) {
  fail(e.message);
}
const bytes = Req.encode(message).finish();
const decoded = Req.decode(bytes);
const verifyError = Req.verify(decoded);
if (verifyError) fail(verifyError);
const back = Req.toObject(decoded, {longs: String, enums: Number, bytes: String, defaults: false});
const difference = firstDifference(withoutDefaults(converted), back, '$');
if (difference) fail(difference);

// ---- what a trace must be ------------------------------------------------------------------------
const spans = [];
for (const rs of doc.resourceSpans || []) for (const ss of rs.scopeSpans || []) spans.push(...(ss.spans || []));
if (spans.length === 0) fail('no span');
const byId = new Map();
for (const s of spans) {
  if (byId.has(s.spanId)) fail(`span id ${s.spanId} is used twice: '${byId.get(s.spanId).name}' and '${s.name}'`);
  byId.set(s.spanId, s);
}
const traces = new Set(spans.map(s => s.traceId));
if (traces.size !== 1) fail(`${traces.size} trace ids for one run`);
const roots = spans.filter(s => s.parentSpanId === undefined);
if (roots.length !== 1) fail(`${roots.length} root spans`);
const nanos = v => {
  if (typeof v !== 'string' || !/^[0-9]+$/.test(v)) fail(`a time that is not a decimal string: ${JSON.stringify(v)}`);
  return BigInt(v);
};
for (const s of spans) {
  if (!s.name) fail(`span ${s.spanId} has no name`);
  const start = nanos(s.startTimeUnixNano), end = nanos(s.endTimeUnixNano);
  if (start === 0n) fail(`'${s.name}' has no start time`);
  if (end < start) fail(`'${s.name}' ends before it starts`);
  if (!(s.kind >= 1 && s.kind <= 5)) fail(`'${s.name}' has no span kind`);
  if (s.parentSpanId !== undefined) {
    const parent = byId.get(s.parentSpanId);
    if (!parent) fail(`'${s.name}' names a parent that is not in the export`);
    if (start < nanos(parent.startTimeUnixNano) || end > nanos(parent.endTimeUnixNano))
      fail(`'${s.name}' is not within its parent '${parent.name}'`);
  }
  const code = s.status ? s.status.code : 0;
  if (![0, 1, 2].includes(code)) fail(`'${s.name}' has status code ${code}`);
  if (code === 2 && !(s.status.message && s.status.message.length)) fail(`'${s.name}' failed without a message`);
  for (const e of s.events || []) if (nanos(e.timeUnixNano) === 0n) fail(`an event of '${s.name}' has no time`);
}
assert.strictEqual(Req.decode(bytes).resourceSpans[0].scopeSpans[0].spans.length, spans.length);

console.log(JSON.stringify({
  spans: spans.length,
  names: spans.map(s => s.name),
  errors: spans.filter(s => s.status && s.status.code === 2).map(s => s.name),
  events: spans.reduce((n, s) => n + (s.events || []).length, 0),
}));
