// Compile the chain contracts with the npm `solc` pinned in package.json and
// write one artifact JSON per contract (abi, bytecode, deployedBytecode,
// compiler version, settings).
//
//   node gateway/chain/compile.mjs             rewrite the committed artifacts
//   node gateway/chain/compile.mjs --out DIR   write them to DIR instead
//
// The artifacts are committed so the gateway never needs Node at run time;
// tests/test_chain_artifact.py recompiles into a temp dir and demands
// byte-identical output, so every input below is fixed: source unit names
// are bare file names (no machine paths end up in the metadata hash) and
// the settings are spelled out rather than left to compiler defaults.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACTS = ["SurgeAnchor", "Baseline", "SurgeRewards", "SurgeToken"];
const PRAGMA_VERSION = "0.8.28";

// Frozen: changing any of these changes the bytecode (and gas numbers).
const SETTINGS = {
  optimizer: { enabled: true, runs: 10000 },
  evmVersion: "cancun",
  // The IR pipeline saves ~350 gas per anchor() over the legacy one.
  viaIR: true,
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function parseArgs(argv) {
  const i = argv.indexOf("--out");
  if (i === -1) return HERE;
  if (i + 1 >= argv.length) throw new Error("--out needs a directory");
  return argv[i + 1];
}

function main() {
  const outDir = parseArgs(process.argv.slice(2));
  const version = solc.version();
  // The pragma pins an exact version; refuse to build with any other solc so
  // a stray `npm install` cannot silently change the committed bytecode.
  if (!version.startsWith(PRAGMA_VERSION + "+")) {
    throw new Error(`solc ${version} does not match pragma ${PRAGMA_VERSION}`);
  }

  const sources = {};
  for (const name of CONTRACTS) {
    sources[`${name}.sol`] = { content: readFileSync(join(HERE, `${name}.sol`), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));

  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  for (const e of output.errors ?? []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length > 0) {
    process.exitCode = 1;
    return;
  }

  mkdirSync(outDir, { recursive: true });
  const { outputSelection, ...recordedSettings } = SETTINGS;
  for (const name of CONTRACTS) {
    const unit = `${name}.sol`;
    const c = output.contracts[unit][name];
    const artifact = {
      contractName: name,
      sourceName: unit,
      compiler: { name: "solc", version },
      settings: recordedSettings,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    writeFileSync(join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + "\n");
  }
}

main();
