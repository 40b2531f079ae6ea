// Validates AsyncAPI documents with the AsyncAPI initiative's own parser (@asyncapi/parser).
// Usage: node scripts/asyncapi-validate.cjs PARSER_DIR FILE...  (PARSER_DIR: where npm installed it)
// Prints each diagnostic; exits 1 if any document has an error (warnings are printed, not fatal).
const fs = require("fs");
const path = require("path");

async function main() {
  const [parserDir, ...files] = process.argv.slice(2);
  if (!parserDir || files.length === 0) {
    console.error("usage: asyncapi-validate.cjs PARSER_DIR FILE...");
    process.exit(2);
  }
  const { Parser } = require(path.join(parserDir, "node_modules", "@asyncapi", "parser"));
  const parser = new Parser();
  let failed = false;
  for (const file of files) {
    const { document, diagnostics } = await parser.parse(fs.readFileSync(file, "utf8"));
    const errors = diagnostics.filter((d) => d.severity === 0);
    for (const d of diagnostics) {
      const where = (d.path || []).join("/");
      console.log(`${file}: ${["error", "warning", "info", "hint"][d.severity] || d.severity} ${d.code}: ${d.message} (${where})`);
    }
    if (errors.length > 0 || !document) {
      failed = true;
      console.log(`${file}: INVALID (${errors.length} error(s))`);
    } else {
      console.log(`${file}: valid AsyncAPI ${document.version()}: ${document.channels().length} channel(s), ` +
                  `${document.operations().length} operation(s), ${document.components().messages().length} message(s)`);
    }
  }
  process.exit(failed ? 1 : 0);
}

main().catch((err) => { console.error(err); process.exit(1); });
