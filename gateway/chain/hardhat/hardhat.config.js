// Minimal hardhat 3 config: the integration tests only need `hardhat node`
// (a local JSON-RPC chain); contracts are compiled by ../compile.mjs with the
// pinned npm solc, so no solidity section and no plugins here.
export default {};
