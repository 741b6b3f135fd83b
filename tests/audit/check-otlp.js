#!/usr/bin/env node
// Parses an OTLP JSON export with the OpenTelemetry protobuf definitions (JSON mapping).
const root = require('@opentelemetry/otlp-transformer/build/src/generated/root');
const fs = require('fs');
const Req = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const doc = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
// OTLP/JSON encodes trace and span ids as hex, where plain proto3 JSON wants base64.
for (const rs of doc.resourceSpans) for (const ss of rs.scopeSpans) for (const s of ss.spans) {
  for (const k of ['traceId', 'spanId', 'parentSpanId'])
    if (s[k] !== undefined) s[k] = Buffer.from(s[k], 'hex').toString('base64');
}
const msg = Req.fromObject(doc);  // proto3 JSON mapping: 64-bit integers as strings
const err = Req.verify(msg);
if (err) { console.error('invalid:', err); process.exit(1); }
const bytes = Req.encode(msg).finish();
const back = Req.decode(bytes);
const spans = back.resourceSpans[0].scopeSpans[0].spans;
for (const s of spans) {
  if (s.traceId.length !== 16 || s.spanId.length !== 8) throw new Error('bad id length in ' + s.name);
  if (s.endTimeUnixNano.lessThan(s.startTimeUnixNano)) throw new Error('span ends before it starts: ' + s.name);
  if (s.startTimeUnixNano.toString() === '0') throw new Error('no start time: ' + s.name);
}
console.log(JSON.stringify({spans: spans.length, names: spans.map(s => s.name), events: spans.reduce((n, s) => n + s.events.length, 0)}));
