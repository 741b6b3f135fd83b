#!/usr/bin/env node
// Validates every line of a JSON Lines file against a JSON Schema (2020-12) with ajv.
// usage: validate-jsonl.js SCHEMA FILE
const Ajv2020 = require('ajv/dist/2020');
const fs = require('fs');
const [schemaPath, file] = process.argv.slice(2);
const ajv = new Ajv2020({ allErrors: true, strict: true });
const validate = ajv.compile(JSON.parse(fs.readFileSync(schemaPath, 'utf8')));
const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length);
let bad = 0;
lines.forEach((line, i) => {
  if (!validate(JSON.parse(line))) {
    bad++;
    console.error(`line ${i + 1}: ${ajv.errorsText(validate.errors)}`);
  }
});
console.log(`${lines.length - bad} valid, ${bad} invalid`);
process.exit(bad ? 1 : 0);
