// check.mjs: the workflow language's outside checks, run by `meson test` (suite 'schema'):
//   1. schemas/workflow.schema.json is a valid JSON Schema 2020-12 (ajv, strict mode);
//   2. every workflow under workflows/ validates against it, and broken files that the schema
//      can see (wrong keys, types, shapes) fail it;
//   3. `troupe graph` output of every example parses with Mermaid's own parser and renders
//      with Graphviz (`dot -Tsvg`);
//   4. `troupe validate` accepts the examples (twins with one plan hash) and lists a located
//      problem for every broken file; `troupe run` refuses actions not performed yet.
// Exit 0 when all pass, 77 (skipped) when the npm packages are not installed and
// TROUPE_REQUIRE_SCHEMA is not set, 1 otherwise.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = process.env.TROUPE_SOURCE_DIR ?? join(here, '..', '..');
const build = process.env.TROUPE_BUILD_DIR ?? join(source, 'build');

if (!existsSync(join(here, 'node_modules', 'ajv'))) {
    const message = 'tests/schema: npm packages missing (run: cd tests/schema && npm ci)';
    if (process.env.TROUPE_REQUIRE_SCHEMA) {
        console.error(message);
        process.exit(1);
    }
    console.log(`SKIP ${message}`);
    process.exit(77);
}

const { default: Ajv2020 } = await import('ajv/dist/2020.js');
const YAML = await import('yaml');

let failures = 0;
const ok = (what) => console.log(`ok   ${what}`);
const fail = (what, why) => {
    failures++;
    console.log(`FAIL ${what}: ${why}`);
};

function readWorkflow(path) {
    const text = readFileSync(path, 'utf8');
    return path.endsWith('.json') ? JSON.parse(text) : YAML.parse(text, { version: '1.2' });
}

// ---- 1 and 2: the schema ---------------------------------------------------------------------

const schema = JSON.parse(readFileSync(join(source, 'schemas', 'workflow.schema.json'), 'utf8'));
// strictRequired is off: the oneOf/if branches name properties that the step defines beside them.
const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false });
const validate = ajv.compile(schema);
ok('the schema compiles (JSON Schema 2020-12, strict)');

// Every property of the schema has a description and an example: the reference is complete.
function walkDescriptions(node, path) {
    if (!node || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node.properties ?? {})) {
        if (!value.description) fail(`${path}.${key}`, 'no description');
        const hasExample = value.examples || (value.$ref && schema.$defs[value.$ref.split('/').pop()].examples);
        if (!hasExample) fail(`${path}.${key}`, 'no example');
        walkDescriptions(value, `${path}.${key}`);
    }
    for (const branch of node.oneOf ?? []) walkDescriptions(branch, path);
}
walkDescriptions(schema, '$');
for (const [name, def] of Object.entries(schema.$defs)) walkDescriptions(def, `$defs.${name}`);

// docs/workflows.md is kept beside the schema: every field the schema knows is on the page.
const docs = readFileSync(join(source, 'docs', 'workflows.md'), 'utf8');
const fields = new Set();
(function collect(node) {
    if (!node || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node.properties ?? {})) {
        fields.add(key);
        collect(value);
    }
    for (const branch of [...(node.oneOf ?? []), ...Object.values(node.$defs ?? {})]) collect(branch);
})(schema);
const undocumented = [...fields].filter((f) => f !== '$schema' && !new RegExp(`(^|[^A-Za-z_])${f.replace('$', '\\$')}([^A-Za-z_]|$)`, 'm').test(docs));
if (undocumented.length) fail('docs/workflows.md', `fields not described: ${undocumented.join(', ')}`);
else ok(`docs/workflows.md mentions all ${fields.size} fields of the schema`);

const workflowsDir = join(source, 'workflows');
const examples = readdirSync(workflowsDir).filter((f) => /\.(ya?ml|json)$/.test(f)).sort();
if (examples.length < 2) fail('workflows/', 'no examples found');
for (const file of examples) {
    const doc = readWorkflow(join(workflowsDir, file));
    if (validate(doc)) ok(`workflows/${file} validates against the schema`);
    else fail(`workflows/${file}`, ajv.errorsText(validate.errors));
}

// Broken files whose mistake is one of shape, which the schema must catch too.
const schemaVisible = [
    'unknown-key.yaml', 'unknown-key.json', 'missing-steps.yaml', 'empty-steps.json',
    'wrong-type.yaml', 'wrong-type.json', 'top-not-mapping.yaml', 'missing-action.yaml',
    'two-actions.yaml', 'eval-with-persona.yaml', 'concurrency-without-for-each.yaml',
    'retry-error-class.yaml', 'bad-duration.yaml', 'on-error-bad.yaml',
    'approval-missing-why.yaml', 'sse-type.json', 'replicas-out-of-range.yaml',
    'with-on-eval.yaml', 'persona-unknown-key.yaml', 'limits-unknown-key.yaml',
    'resource-missing-uri.yaml', 'needs-wrong-type.yaml', 'outputs-not-mapping.yaml',
    'workflow-persona.yaml', 'model-literal-key.yaml', 'output-schema-on-tool.yaml',
    'model-base-url-userinfo.yaml', 'output-schema-boolean.yaml',
];
for (const file of schemaVisible) {
    const doc = readWorkflow(join(source, 'tests', 'workflows', 'broken', file));
    if (validate(doc)) fail(`broken/${file}`, 'the schema accepts it');
    else ok(`broken/${file} is refused by the schema`);
}

// ---- 3: the drawings ------------------------------------------------------------------------

const troupe = join(build, 'troupe');
const { JSDOM } = await import('jsdom');
const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');

for (const file of examples) {
    const path = join(workflowsDir, file);
    const mermaidRun = spawnSync(troupe, ['graph', '--format', 'mermaid', path], { encoding: 'utf8' });
    if (mermaidRun.status !== 0) {
        fail(`troupe graph ${file}`, mermaidRun.stderr);
        continue;
    }
    try {
        const result = await mermaid.parse(mermaidRun.stdout);
        if (!result || !String(result.diagramType).startsWith('flowchart'))
            fail(`mermaid ${file}`, `parsed as ${JSON.stringify(result)}`);
        else ok(`troupe graph ${file} parses as a Mermaid flowchart`);
    } catch (e) {
        fail(`mermaid ${file}`, e.message);
    }
    const dotRun = spawnSync(troupe, ['graph', '--format', 'dot', path], { encoding: 'utf8' });
    const svg = spawnSync('dot', ['-Tsvg'], { input: dotRun.stdout, encoding: 'utf8' });
    if (dotRun.status !== 0 || svg.status !== 0 || !svg.stdout.includes('<svg'))
        fail(`dot ${file}`, svg.error ? svg.error.message : `${dotRun.stderr}${svg.stderr}`);
    else ok(`troupe graph --format dot ${file} renders with dot -Tsvg`);
}

// ---- 4: troupe validate and troupe run on the same files ------------------------------------

const examplePaths = examples.map((f) => join(workflowsDir, f));
const valid = spawnSync(troupe, ['validate', '--hash', ...examplePaths], { encoding: 'utf8' });
if (valid.status !== 0) fail('troupe validate workflows/*', `exit ${valid.status}: ${valid.stdout}${valid.stderr}`);
else ok('troupe validate accepts every example');
// Twins (same name, .yaml and .json) have the same plan hash.
const hashes = new Map();
for (const line of valid.stdout.trim().split('\n')) {
    const [hash, path] = line.split(/\s+/);
    const stem = path.replace(/\.(ya?ml|json)$/, '');
    if (hashes.has(stem) && hashes.get(stem) !== hash) fail(`twins ${stem}`, 'plan hashes differ');
    else if (hashes.has(stem)) ok(`${stem.split('/').pop()}: YAML and JSON twins have the same plan hash`);
    hashes.set(stem, hash);
}

const brokenDir = join(source, 'tests', 'workflows', 'broken');
const brokenFiles = readdirSync(brokenDir).sort().map((f) => join(brokenDir, f));
const broken = spawnSync(troupe, ['validate', ...brokenFiles], { encoding: 'utf8' });
const lines = broken.stdout.trim().split('\n');
const located = lines.filter((l) => /^[^:]+:\d+:\d+: ./.test(l));
if (broken.status !== 1) fail('troupe validate broken/*', `exit ${broken.status}, not 1`);
else if (located.length !== lines.length || lines.length < brokenFiles.length)
    fail('troupe validate broken/*', `${lines.length} lines for ${brokenFiles.length} files`);
else if (!/problems in \d+ of \d+ files/.test(broken.stderr)) fail('troupe validate', broken.stderr);
else ok(`troupe validate lists ${lines.length} problems with positions for ${brokenFiles.length} broken files, exit 1`);

// The hash `troupe validate --hash` prints is the plan_hash a run of the file records.
{
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'troupe-schema-'));
    const db = join(dir, 'troupe.db');
    const hello = join(workflowsDir, 'hello.yaml');
    const run = spawnSync(troupe, ['run', '--db', db, '-q', hello], { encoding: 'utf8', cwd: dir });
    const runs = spawnSync(troupe, ['runs', '--db', db, '--json'], { encoding: 'utf8' });
    const stored = runs.status === 0 ? JSON.parse(runs.stdout.trim().split('\n')[0]).plan_hash : null;
    const printed = spawnSync(troupe, ['validate', '--hash', hello], { encoding: 'utf8' }).stdout.split(/\s+/)[0];
    if (run.status !== 0) fail('troupe run hello.yaml', `exit ${run.status}: ${run.stderr}`);
    else if (stored !== printed) fail('plan hash', `run stored ${stored}, validate printed ${printed}`);
    else ok('a run records the plan hash that troupe validate --hash prints');
    rmSync(dir, { recursive: true, force: true });
}

// A drawing that is not Mermaid must be refused, or the check above proves nothing.
try {
    await mermaid.parse('flowchart TD\n  a -->\n');
    fail('mermaid', 'accepted a broken flowchart');
} catch {
    ok('the Mermaid parser refuses a broken flowchart');
}

console.log(failures ? `${failures} failed` : 'all passed');
process.exit(failures ? 1 : 0);
