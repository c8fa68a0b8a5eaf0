// Copies what the pages served by a gateway node need into gateway/static/lib/ (committed,
// so that nothing is built at run time): the SDK as compiled from src/ (its import of
// @msgpack/msgpack pointed at the vendored copy, so no import map is needed), the ESM build
// of @msgpack/msgpack and uPlot, each with its license. `--check` changes nothing and fails
// when the committed files differ from what a build gives (npm test runs it).
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const lib = join(root, "..", "..", "gateway", "static", "lib");
const check = process.argv.includes("--check");
const modules = join(root, "node_modules");

const stripMap = (text) => text.replace(/^\/\/# sourceMappingURL=.*$/gm, "").trimEnd() + "\n";
const wanted = new Map();

for (const name of readdirSync(join(root, "dist"))) {
  if (!name.endsWith(".js")) continue;
  const text = readFileSync(join(root, "dist", name), "utf8").replaceAll('from "@msgpack/msgpack"', 'from "../msgpack/index.mjs"');
  wanted.set(join("sdk", name), stripMap(text));
}
const msgpack = join(modules, "@msgpack", "msgpack");
for (const name of existing(join(msgpack, "dist.esm"))) {
  if (name.endsWith(".mjs")) wanted.set(join("msgpack", name), stripMap(readFileSync(join(msgpack, "dist.esm", name), "utf8")));
}
wanted.set(join("msgpack", "LICENSE"), readFileSync(join(msgpack, "LICENSE"), "utf8"));
const uplot = join(modules, "uplot");
wanted.set(join("uplot", "uPlot.esm.js"), readFileSync(join(uplot, "dist", "uPlot.esm.js"), "utf8"));
wanted.set(join("uplot", "uPlot.min.css"), readFileSync(join(uplot, "dist", "uPlot.min.css"), "utf8"));
wanted.set(join("uplot", "LICENSE"), readFileSync(join(uplot, "LICENSE"), "utf8"));
const version = (dir) => JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;
wanted.set(
  "VERSIONS.json",
  JSON.stringify({ "notecard-sdk": version(root), "@msgpack/msgpack": version(msgpack), uplot: version(uplot) }, null, 2) + "\n",
);

function existing(dir, prefix = "") {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? existing(join(dir, entry.name), join(prefix, entry.name)) : [join(prefix, entry.name)],
  );
}

const handWritten = new Set(["common.css"]); // the pages' own style sheet
const stale = existing(lib).filter((name) => !wanted.has(name) && !handWritten.has(name));
const differing = [...wanted].filter(([name, text]) => !existsSync(join(lib, name)) || readFileSync(join(lib, name), "utf8") !== text);
if (check) {
  if (stale.length || differing.length) {
    console.error("gateway/static/lib is not what a build gives; run `npm run build` in clients/js and commit:");
    for (const name of [...differing.map(([n]) => n), ...stale]) console.error(`  ${name}`);
    process.exit(1);
  }
  console.log("gateway/static/lib is up to date");
} else {
  for (const name of stale) rmSync(join(lib, name));
  for (const [name, text] of differing) {
    mkdirSync(dirname(join(lib, name)), { recursive: true });
    writeFileSync(join(lib, name), text);
  }
  console.log(`gateway/static/lib: ${differing.length} written, ${stale.length} removed`);
}
