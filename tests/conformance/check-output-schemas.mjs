// Checks that troupe's loan servers keep the promises of their tool definitions: every
// inputSchema and outputSchema compiles (JSON Schema 2020-12, with ajv), and the
// structuredContent of calls over a spread of the generated applications validates against
// its tool's outputSchema. Runs each server over stdio, newline-delimited JSON-RPC.
// Usage: node check-output-schemas.mjs BUILD-DIR   (after `npm ci` in tests/conformance)
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const build = process.argv[2];
if (!build) {
  console.error("usage: check-output-schemas.mjs BUILD-DIR");
  process.exit(2);
}

function start(program) {
  const child = spawn(`${build}/${program}`, [], { stdio: ["pipe", "pipe", "inherit"] });
  const waiting = new Map();
  createInterface({ input: child.stdout }).on("line", (line) => {
    const msg = JSON.parse(line);
    waiting.get(msg.id)?.(msg);
    waiting.delete(msg.id);
  });
  let next = 1;
  return {
    request(method, params) {
      const id = next++;
      child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
      return new Promise((resolve) => waiting.set(id, resolve));
    },
    close() {
      child.stdin.end();
      return new Promise((resolve) => child.on("exit", resolve));
    },
  };
}

const pad = (n) => String(n).padStart(5, "0");
// Every 50th application, and the ten fixed cases: all kinds of profile.
const numbers = [...Array(10).keys()].map((i) => i + 1);
for (let n = 50; n <= 10000; n += 50) numbers.push(n);

const calls = {
  "troupe-credit-bureau": numbers.flatMap((n) => [
    ["pull_report", { applicant_id: `A${pad(n)}` }],
    ["get_score", { applicant_id: `A${pad(n)}` }],
  ]),
  "troupe-documents": numbers.flatMap((n) => [
    ["get_application", { application_id: `APP-${pad(n)}` }],
    ["list_documents", { application_id: `APP-${pad(n)}` }],
    ["check_completeness", { application_id: `APP-${pad(n)}` }],
    ["get_document", { application_id: `APP-${pad(n)}`, doc_id: "bank_statement-1" }],
  ]),
  "troupe-lending-policy": [],
};
for (const version of ["v3", "v2"]) {
  for (const score of [null, 500, 590, 700]) {
    for (const product of ["mortgage", "auto", "personal"]) {
      for (const [amount, collateral, existing] of [[50000, 60000, 0], [900000, 950000, 1000000]]) {
        calls["troupe-lending-policy"].push(
          ["evaluate_application", { product, loan_amount: amount,
            collateral_value: product === "personal" ? null : collateral,
            monthly_income: 8000, monthly_debt_payments: 1500, proposed_monthly_payment: 2000,
            score, existing_exposure: existing, policy_version: version }],
          ["check_ltv", { product, loan_amount: amount, collateral_value: collateral,
            policy_version: version }],
          ["check_exposure", { product, loan_amount: amount, existing_exposure: existing }]);
      }
    }
    calls["troupe-lending-policy"].push(["check_score", { score, policy_version: version }],
      ["check_dti", { monthly_income: 5000, monthly_debt_payments: 2000 }],
      ["get_policy", { policy_version: version }]);
  }
}

let failures = 0;
for (const [program, list] of Object.entries(calls)) {
  const server = start(program);
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  const tools = (await server.request("tools/list", {})).result.tools;
  const validators = {};
  for (const tool of tools) {
    ajv.compile(tool.inputSchema);
    validators[tool.name] = ajv.compile(tool.outputSchema);
  }
  let checked = 0;
  for (const [name, args] of list) {
    const response = await server.request("tools/call", { name, arguments: args });
    const result = response.result;
    if (!result || result.isError) {
      console.error(`${program} ${name} ${JSON.stringify(args)}: ${JSON.stringify(response)}`);
      failures++;
      continue;
    }
    if (!validators[name](result.structuredContent)) {
      console.error(`${program} ${name} ${JSON.stringify(args)}: ` +
        ajv.errorsText(validators[name].errors));
      failures++;
    }
    checked++;
  }
  await server.close();
  console.log(`output schemas ${program}: ${checked} results of ${tools.length} tools checked`);
}
process.exit(failures ? 1 : 0);
