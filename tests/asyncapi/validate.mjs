// Validate AsyncAPI documents with the official parser: `node validate.mjs a.json [b.json ...]`.
// Prints one JSON line per file: {"file", "valid", "errors": [...], "warnings": [...]}; exits 1 when
// any document is invalid, so it is usable on its own (CI) as well as from tests/contract/test_asyncapi.py.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const parser = new Parser();
let failed = false;

function describe(diagnostic) {
  const where = (diagnostic.path || []).join('/');
  return `${diagnostic.code}: ${diagnostic.message}${where ? ` at /${where}` : ''}`;
}

for (const file of process.argv.slice(2)) {
  const text = await readFile(file, 'utf8');
  const { document, diagnostics } = await parser.parse(text);
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).map(describe);
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).map(describe);
  const valid = document !== undefined && errors.length === 0;
  failed ||= !valid;
  console.log(JSON.stringify({ file, valid, errors, warnings }));
}
process.exit(failed ? 1 : 0);
