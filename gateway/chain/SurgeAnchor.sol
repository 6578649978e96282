// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title SurgeAnchor: one RFC 9162 Merkle root per gateway batch.
/// @notice CONSENSUS-CRITICAL. Receipts handed to device owners point at
/// this contract's storage and at verifyInclusion; the storage layout and
/// the proof algorithm are frozen once deployed.
///
/// Storage layout, and why it looks unusual
/// ----------------------------------------
/// Each batch needs 320 bits kept forever: its 256-bit root and its 64-bit
/// tree size. A naive layout (a struct per batch plus a per-gateway
/// "lastSeq" word) writes two fresh slots and rewrites a third on every
/// anchor, ~1.6x the gas of "store one bytes32 and emit an event". Here:
///
///  * `_roots[(gw, seq)]` holds the root: one fresh slot per batch, the
///    unavoidable part.
///  * `_lanes[(gw, seq >> 3)]` packs the sizes of eight consecutive batches,
///    32 bits each ("lanes"), lane i at bits [32*i, 32*i+32). Only one anchor
///    in eight opens a fresh slot; the other seven rewrite a slot that is
///    already non-zero, which is ~4x cheaper. A size that does not fit a lane
///    (>= BIG, i.e. a batch of four billion reports or more, never expected)
///    is marked BIG and kept whole in `_bigSizes[(gw, seq)]`, so the full
///    uint64 range of the ABI is still honoured.
///  * There is no lastSeq word and no authorisation word. A lane tells it all:
///      lane of seq 0 : ENROLLED once the owner has ever authorised gw;
///      lane of seq>=1: 0 = not anchored, REVOKED = the owner deauthorised gw
///                      and this is the next seq gw would have used,
///                      BIG = anchored, size in _bigSizes,
///                      anything else = the size of that anchored batch.
///    anchor(seq) only has to check "lane(seq-1) is a batch or ENROLLED and
///    lane(seq) is 0", and lane(seq-1) sits in the word it is about to write
///    except once every eight batches. Anchored seqs are therefore always
///    exactly 1..lastSeq (no duplicates, no gaps), and lastSeq() is found by
///    a search in a view, which costs nothing on chain.
///
/// Measured with gateway/chain/gas.py: ~1.19x Baseline.store() on average.
contract SurgeAnchor {
    uint256 private constant LANE_MASK = 0xffffffff;
    uint256 private constant REVOKED = 0xffffffff;
    uint256 private constant BIG = 0xfffffffe;
    uint256 private constant ENROLLED = 1;

    /// Deployer; the only account that can (de)authorise gateways. Immutable
    /// so that checking it never reads storage.
    address public immutable owner;

    // All maps are keyed by one word, (gateway, index) packed by _key(),
    // rather than nested mappings: one keccak per access instead of two, on
    // the hot path.
    mapping(uint256 => bytes32) private _roots;
    mapping(uint256 => uint256) private _lanes;
    mapping(uint256 => uint64) private _bigSizes;

    event Anchored(address indexed gateway, uint64 indexed batchSeq, bytes32 root, uint64 size);
    event GatewayAuthorized(address indexed gateway, bool authorized);

    error NotOwner();
    error NotAuthorized(address gateway);
    error AlreadyAnchored(uint64 batchSeq, uint64 lastSeq);
    error SequenceGap(uint64 batchSeq, uint64 expected);
    error InvalidBatch();

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    // ------------------------------------------------------------------ owner

    function authorize(address gateway) external onlyOwner {
        if (_lane(gateway, 0) == 0) {
            // First authorisation: lane 0 becomes the predecessor of seq 1.
            _lanes[_key(gateway, 0)] |= ENROLLED;
        } else {
            // Re-authorisation lifts the revocation marker, if any; the
            // gateway resumes at the seq after its last anchored batch.
            uint256 next = uint256(lastSeq(gateway)) + 1;
            if (_lane(gateway, next) == REVOKED) _setLane(gateway, next, 0);
        }
        emit GatewayAuthorized(gateway, true);
    }

    function deauthorize(address gateway) external onlyOwner {
        if (isAuthorized(gateway)) {
            // Occupying the next lane makes anchor()'s own "lane(seq) is 0"
            // check fail, so revocation costs anchor() no extra storage read.
            _setLane(gateway, uint256(lastSeq(gateway)) + 1, REVOKED);
        }
        emit GatewayAuthorized(gateway, false);
    }

    // ---------------------------------------------------------------- gateway

    /// Anchor batch `batchSeq` of msg.sender: must be exactly lastSeq + 1.
    /// This is the hot path: every line here is paid once per batch.
    function anchor(uint64 batchSeq, bytes32 root, uint64 size) external {
        uint256 seq = batchSeq;
        uint256 key = _key(msg.sender, seq >> 3);
        uint256 shift = (seq & 7) << 5;
        uint256 word = _lanes[key];
        uint256 prev;
        if (shift != 0) {
            prev = (word >> (shift - 32)) & LANE_MASK;
        } else if (seq != 0) {
            // Predecessor is lane 7 of the previous word (cold read, 1 in 8).
            prev = _lanes[key - 1] >> 224;
        }
        // Accept iff prev is a batch or ENROLLED (not 0: covers seq 0, gaps
        // and never-authorised senders; not REVOKED), our lane is free, and
        // size and root are non-zero. "prev - 1 < REVOKED - 1" (wrapping)
        // tests "prev != 0 && prev != REVOKED" in one comparison.
        bool ok;
        unchecked {
            ok = (prev - 1 < REVOKED - 1) && (word >> shift) & LANE_MASK == 0 && size != 0
                && root != bytes32(0);
        }
        if (!ok) _reject(batchSeq, root, size);
        uint256 lane = size;
        if (lane >= BIG) {
            lane = BIG;
            _bigSizes[_key(msg.sender, seq)] = size;
        }
        _lanes[key] = word | (lane << shift);
        _roots[_key(msg.sender, seq)] = root;
        emit Anchored(msg.sender, batchSeq, root, size);
    }

    // ------------------------------------------------------------------ views

    function isAuthorized(address gateway) public view returns (bool) {
        if (_lane(gateway, 0) == 0) return false;
        return _lane(gateway, uint256(lastSeq(gateway)) + 1) != REVOKED;
    }

    /// Highest anchored seq of `gateway` (0 if none). Anchored seqs are
    /// exactly 1..n, so an exponential then binary search finds n in
    /// O(log n) reads.
    function lastSeq(address gateway) public view returns (uint64) {
        if (!_anchored(gateway, 1)) return 0;
        uint256 lo = 1; // anchored
        uint256 hi = 2; // probe; 2**64 is never anchored, so this ends
        while (_anchored(gateway, hi)) {
            lo = hi;
            hi <<= 1;
        }
        while (hi - lo > 1) {
            uint256 mid = (lo + hi) >> 1;
            if (_anchored(gateway, mid)) lo = mid;
            else hi = mid;
        }
        return uint64(lo);
    }

    function rootOf(address gateway, uint64 batchSeq) external view returns (bytes32) {
        return _roots[_key(gateway, batchSeq)];
    }

    function sizeOf(address gateway, uint64 batchSeq) public view returns (uint64) {
        if (!_anchored(gateway, batchSeq)) return 0;
        uint256 lane = _lane(gateway, batchSeq);
        return lane == BIG ? _bigSizes[_key(gateway, batchSeq)] : uint64(lane);
    }

    /// RFC 9162 §2.1.3.2: does `proof` show that the leaf with hash
    /// `leafHash` (= SHA-256(0x00 || leaf)) sits at `leafIndex` of the tree of
    /// `treeSize` leaves anchored as batch `batchSeq` of `gateway`?
    function verifyInclusion(
        address gateway,
        uint64 batchSeq,
        bytes32 leafHash,
        uint256 leafIndex,
        uint256 treeSize,
        bytes32[] calldata proof
    ) external view returns (bool) {
        // The size is part of what was anchored: a proof for another tree
        // shape with the same root is not a proof of this batch.
        if (treeSize == 0 || sizeOf(gateway, batchSeq) != treeSize) return false;
        if (leafIndex >= treeSize) return false;
        uint256 fn = leafIndex;
        uint256 sn = treeSize - 1;
        bytes32 r = leafHash;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false;
            if (fn & 1 == 1 || fn == sn) {
                r = _node(proof[i], r);
                // A right-edge node with no sibling at some levels: skip
                // those levels until fn is a right child again (or the root).
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = _node(r, proof[i]);
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == _roots[_key(gateway, batchSeq)];
    }

    // --------------------------------------------------------------- internal

    function _node(bytes32 left, bytes32 right) private pure returns (bytes32) {
        return sha256(abi.encodePacked(bytes1(0x01), left, right));
    }

    /// Map key: gateway in bits [64, 224), index (< 2**64) in bits [0, 64).
    /// Injective, so distinct (gateway, index) pairs never share a slot; a
    /// word index from seq >> 3 is < 2**61, and key - 1 in anchor() only
    /// runs for a non-zero index, so it stays within the same gateway.
    function _key(address gateway, uint256 index) private pure returns (uint256) {
        return (uint256(uint160(gateway)) << 64) | index;
    }

    function _lane(address gateway, uint256 seq) private view returns (uint256) {
        return (_lanes[_key(gateway, seq >> 3)] >> ((seq & 7) << 5)) & LANE_MASK;
    }

    function _setLane(address gateway, uint256 seq, uint256 value) private {
        uint256 shift = (seq & 7) << 5;
        uint256 key = _key(gateway, seq >> 3);
        _lanes[key] = (_lanes[key] & ~(LANE_MASK << shift)) | (value << shift);
    }

    function _anchored(address gateway, uint256 seq) private view returns (bool) {
        if (seq == 0 || seq > type(uint64).max) return false;
        uint256 v = _lane(gateway, seq);
        return v != 0 && v != REVOKED;
    }

    /// Slow path, only reached when anchor() will revert: work out which rule
    /// was broken so the gateway gets a precise, typed reason.
    function _reject(uint64 batchSeq, bytes32 root, uint64 size) private view {
        if (!isAuthorized(msg.sender)) revert NotAuthorized(msg.sender);
        if (batchSeq == 0 || size == 0 || root == bytes32(0)) revert InvalidBatch();
        uint64 last = lastSeq(msg.sender);
        if (batchSeq <= last) revert AlreadyAnchored(batchSeq, last);
        revert SequenceGap(batchSeq, last + 1);
    }
}
