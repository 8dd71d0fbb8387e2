// Compile every covergw schema with Ajv in strict mode (strictRequired, strictTypes, ...).
// Usage: node ajv_strict.js SCHEMA_DIR   (ajv found through NODE_PATH)
"use strict";
const Ajv2020 = require("ajv/dist/2020").default;
const fs = require("fs");
const path = require("path");

const dir = process.argv[2];
const ajv = new Ajv2020({ strict: true, strictRequired: true, allErrors: true });
const schemas = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith(".schema.json"))
  .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")));
for (const schema of schemas) ajv.addSchema(schema);
let failed = 0;
for (const schema of schemas) {
  try {
    ajv.getSchema(schema.$id);
    console.log(`ok ${schema.$id}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${schema.$id}: ${err.message}`);
  }
}
process.exit(failed ? 1 : 0);
