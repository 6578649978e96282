// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title SurgeRewards: one Merkle root of cumulative rewards per gateway epoch, and claims.
/// @notice Each authorised gateway publishes, once per epoch and in order, the
/// RFC 9162 root over its (owner, cumulative amount) leaves. An owner claims
/// with the leaf of any published epoch; the contract pays the difference
/// between that cumulative amount and what it has already paid the owner for
/// that gateway, so one claim collects any number of epochs.
///
/// Leaf data = abi.encodePacked(address account, uint256 cumulative) (52
/// bytes), leaf hash SHA-256(0x00 || data), node SHA-256(0x01 || l || r);
/// the inclusion check is SurgeAnchor.verifyInclusion's, bound to the tree
/// size published with the root.
///
/// Totals (enforced): each published epoch carries its cumulative total, the
/// sum of its leaves' cumulative amounts. It may never decrease from one epoch
/// of a gateway to the next (TotalDecreased), and what it adds to that
/// gateway's outstanding amount (published minus paid) must be covered by the
/// token balance the contract holds when it is published (Underfunded). Claims
/// against a gateway's epochs can never pay out more than its latest published
/// total (ExceedsTotal), whatever leaves its tree holds.
///
/// Trust model: the owner (deployer) decides which gateways may publish; all
/// gateways draw on the one token balance this contract holds. Each gateway's
/// outstanding amount is checked against that balance on its own, so with
/// several gateways the sum can exceed it: a claim larger than the balance
/// reverts (TransferFailed) and stays claimable after a top-up.
///
/// Gas notes (claim is the hot path; gateway/rewards/gas.py measures it):
///  * the root and the tree size are checked against one stored word,
///    keccak256(root, leaves), so a claim reads one epoch slot, not two;
///  * the proof loop is assembly: SHA-256 straight to the precompile from
///    one scratch buffer, siblings read from calldata;
///  * the token is immutable and paid with one raw call;
///  * a gateway's outstanding amount shares its word with the authorised bit
///    and last epoch, so the total check costs a claim one slot read and written.
contract SurgeRewards {
    address public immutable owner;
    address public immutable token;

    /// Per gateway: bit 0 = authorised, bits [1, 65) = last published epoch,
    /// bits [65, 256) = outstanding (latest cumulative total minus what its
    /// epochs have paid). One word: publish() and claim() each read it once.
    mapping(address => uint256) private _gateways;

    uint256 private constant _EPOCH_MASK = (uint256(1) << 64) - 1;
    /// Totals must fit the 191 bits of the outstanding field.
    uint256 private constant _MAX_TOTAL = (uint256(1) << 191) - 1;

    struct Epoch {
        bytes32 root;
        uint64 leaves;
        uint256 total;
    }

    // Keyed by _key(gateway, epoch). _commits is what claims read; _epochs
    // is for the views (rootOf, leavesOf, totalOf).
    mapping(uint256 => bytes32) private _commits;
    mapping(uint256 => Epoch) private _epochs;

    /// Cumulative amount already paid to `account` for `gateway`'s epochs.
    mapping(address => mapping(address => uint256)) public claimed;

    event GatewayAuthorized(address indexed gateway, bool authorized);
    event EpochPublished(address indexed gateway, uint64 indexed epoch, bytes32 root, uint64 leaves, uint256 total);
    event Claimed(address indexed gateway, address indexed account, uint64 epoch, uint256 amount, uint256 cumulative);

    error NotOwner();
    error NotAuthorized(address gateway);
    error EpochGap(uint64 epoch, uint64 expected);
    error AlreadyPublished(uint64 epoch, uint64 lastEpoch);
    error InvalidEpoch();
    error UnknownEpoch(uint64 epoch);
    error InvalidProof();
    error NothingToClaim(uint256 cumulative, uint256 claimed);
    error TransferFailed();
    error TotalDecreased(uint64 epoch, uint256 total, uint256 previous);
    error Underfunded(uint256 outstanding, uint256 balance);
    error ExceedsTotal(uint256 amount, uint256 outstanding);

    constructor(address token_) {
        // A token without code would make every raw transfer call "succeed".
        if (token_.code.length == 0) revert TransferFailed();
        owner = msg.sender;
        token = token_;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    // ------------------------------------------------------------------ owner

    function authorize(address gateway) external onlyOwner {
        _gateways[gateway] |= 1;
        emit GatewayAuthorized(gateway, true);
    }

    /// The gateway's published epochs stay claimable; it just cannot add more
    /// (until re-authorised, when it resumes at lastEpoch + 1).
    function deauthorize(address gateway) external onlyOwner {
        _gateways[gateway] &= ~uint256(1);
        emit GatewayAuthorized(gateway, false);
    }

    // ---------------------------------------------------------------- gateway

    /// Publish epoch `epoch` of msg.sender: must be exactly lastEpoch + 1;
    /// `total` is its cumulative total (sum of its leaves' amounts), at least
    /// the previous epoch's, and the growth must be covered by the balance.
    function publish(uint64 epoch, bytes32 root, uint64 leaves, uint256 total) external {
        uint256 word = _gateways[msg.sender];
        if (word & 1 == 0) revert NotAuthorized(msg.sender);
        if (epoch == 0 || root == bytes32(0) || leaves == 0 || total > _MAX_TOTAL) revert InvalidEpoch();
        uint64 last = uint64((word >> 1) & _EPOCH_MASK);
        if (epoch <= last) revert AlreadyPublished(epoch, last);
        if (epoch != last + 1) revert EpochGap(epoch, last + 1);
        uint256 previous = last == 0 ? 0 : _epochs[_key(msg.sender, last)].total;
        if (total < previous) revert TotalDecreased(epoch, total, previous);
        uint256 outstanding = (word >> 65) + (total - previous);
        uint256 balance = _balance();
        if (outstanding > balance) revert Underfunded(outstanding, balance);
        _gateways[msg.sender] = (outstanding << 65) | (uint256(epoch) << 1) | 1;
        uint256 key = _key(msg.sender, epoch);
        _commits[key] = _commit(root, leaves);
        _epochs[key] = Epoch(root, leaves, total);
        emit EpochPublished(msg.sender, epoch, root, leaves, total);
    }

    // ------------------------------------------------------------------ claim

    /// Pay `account` what `gateway` owes it up to `cumulative`, proven by the
    /// leaf (account, cumulative) at `leafIndex` of epoch `epoch`'s tree.
    /// Anyone may send it; the tokens always go to `account`.
    function claim(
        address gateway,
        uint64 epoch,
        address account,
        uint256 cumulative,
        uint256 leafIndex,
        uint256 treeSize,
        bytes32[] calldata proof
    ) external {
        bytes32 commit = _commits[_key(gateway, epoch)];
        if (commit == bytes32(0)) revert UnknownEpoch(epoch);
        bytes32 r = _rootFromProof(_leafHash(account, cumulative), leafIndex, treeSize, proof);
        // A wrong tree size changes the commitment: reported as InvalidProof.
        if (r == bytes32(0) || _commit(r, treeSize) != commit) revert InvalidProof();
        uint256 done = claimed[gateway][account];
        if (cumulative <= done) revert NothingToClaim(cumulative, done);
        claimed[gateway][account] = cumulative;
        uint256 amount;
        unchecked {
            amount = cumulative - done;
        }
        // Never more than the gateway's published total, whatever its tree says.
        uint256 word = _gateways[gateway];
        uint256 outstanding = word >> 65;
        if (amount > outstanding) revert ExceedsTotal(amount, outstanding);
        unchecked {
            _gateways[gateway] = word - (amount << 65);
        }
        _pay(account, amount);
        emit Claimed(gateway, account, epoch, amount, cumulative);
    }

    // ------------------------------------------------------------------ views

    function isAuthorized(address gateway) external view returns (bool) {
        return _gateways[gateway] & 1 == 1;
    }

    function lastEpoch(address gateway) public view returns (uint64) {
        return uint64((_gateways[gateway] >> 1) & _EPOCH_MASK);
    }

    /// The gateway's latest published cumulative total minus what claims
    /// against its epochs have paid: the most its epochs can still pay.
    function outstandingOf(address gateway) external view returns (uint256) {
        return _gateways[gateway] >> 65;
    }

    function rootOf(address gateway, uint64 epoch) external view returns (bytes32) {
        return _epochs[_key(gateway, epoch)].root;
    }

    function leavesOf(address gateway, uint64 epoch) external view returns (uint64) {
        return _epochs[_key(gateway, epoch)].leaves;
    }

    function totalOf(address gateway, uint64 epoch) external view returns (uint256) {
        return _epochs[_key(gateway, epoch)].total;
    }

    /// What claim() with these arguments would pay: 0 if the epoch is
    /// unknown, the proof does not hold, or nothing is due. (It does not look
    /// at this contract's token balance; claim() reverts if that is short.)
    function claimable(
        address gateway,
        uint64 epoch,
        address account,
        uint256 cumulative,
        uint256 leafIndex,
        uint256 treeSize,
        bytes32[] calldata proof
    ) external view returns (uint256) {
        bytes32 commit = _commits[_key(gateway, epoch)];
        if (commit == bytes32(0)) return 0;
        bytes32 r = _rootFromProof(_leafHash(account, cumulative), leafIndex, treeSize, proof);
        if (r == bytes32(0) || _commit(r, treeSize) != commit) return 0;
        uint256 done = claimed[gateway][account];
        if (cumulative <= done) return 0;
        uint256 outstanding = _gateways[gateway] >> 65;
        return cumulative - done > outstanding ? 0 : cumulative - done;
    }

    // --------------------------------------------------------------- internal

    /// RFC 9162 §2.1.3.2: the root that `proof` leads to from `leafHash` at
    /// `leafIndex` of a `treeSize`-leaf tree, or 0 if the proof has the wrong
    /// shape for that position (SHA-256 output is never 0 in practice).
    /// Same algorithm as SurgeAnchor.verifyInclusion, in assembly: one
    /// 65-byte scratch buffer whose 0x01 prefix is written once, siblings
    /// read straight from calldata, no per-level allocation or bounds check
    /// (the loop runs over exactly proof.length words). Measured: ~190 gas a
    /// level less than the same loop in Solidity with abi.encodePacked.
    function _rootFromProof(bytes32 leafHash, uint256 leafIndex, uint256 treeSize, bytes32[] calldata proof)
        private
        view
        returns (bytes32 r)
    {
        if (leafIndex >= treeSize) return bytes32(0);
        assembly ("memory-safe") {
            let fn := leafIndex
            let sn := sub(treeSize, 1)
            r := leafHash
            let p := mload(0x40) // scratch past the free pointer, never kept
            mstore8(p, 0x01)
            let left := add(p, 1)
            let right := add(p, 33)
            let off := proof.offset
            for { let end := add(off, shl(5, proof.length)) } lt(off, end) { off := add(off, 0x20) } {
                // A proof longer than the path: fail (r = 0 survives the
                // final "sn != 0" test because sn is 0 here).
                if iszero(sn) {
                    r := 0
                    break
                }
                switch or(and(fn, 1), eq(fn, sn))
                case 0 {
                    mstore(left, r)
                    mstore(right, calldataload(off))
                }
                default {
                    mstore(left, calldataload(off))
                    mstore(right, r)
                    // Right-edge levels with no sibling: skip up to the next
                    // level where fn is a right child (or the root).
                    for {} and(iszero(and(fn, 1)), iszero(iszero(fn))) {} {
                        fn := shr(1, fn)
                        sn := shr(1, sn)
                    }
                }
                if iszero(staticcall(gas(), 0x02, p, 65, 0x00, 0x20)) { revert(0, 0) }
                r := mload(0x00)
                fn := shr(1, fn)
                sn := shr(1, sn)
            }
            // A proof shorter than the path: fail.
            if sn { r := 0 }
        }
    }

    /// SHA-256(0x00 || account || cumulative) through the precompile.
    function _leafHash(address account, uint256 cumulative) private view returns (bytes32 h) {
        assembly ("memory-safe") {
            // Scratch space past the free memory pointer, not allocated: the
            // 53 bytes are dead once hashed. shl(88) leaves byte 0 as 0x00.
            let p := mload(0x40)
            mstore(p, shl(88, and(account, 0xffffffffffffffffffffffffffffffffffffffff)))
            mstore(add(p, 21), cumulative)
            if iszero(staticcall(gas(), 0x02, p, 53, 0x00, 0x20)) { revert(0, 0) }
            h := mload(0x00)
        }
    }

    function _commit(bytes32 root, uint256 leaves) private pure returns (bytes32 c) {
        assembly ("memory-safe") {
            mstore(0x00, root)
            mstore(0x20, leaves)
            c := keccak256(0x00, 0x40)
        }
    }

    /// token.balanceOf(this) (the constructor checked the token has code).
    function _balance() private view returns (uint256 b) {
        address t = token;
        bool ok;
        assembly ("memory-safe") {
            mstore(0x00, 0x70a0823100000000000000000000000000000000000000000000000000000000)
            mstore(0x04, address())
            ok := staticcall(gas(), t, 0x00, 0x24, 0x00, 0x20)
            ok := and(ok, eq(returndatasize(), 32))
            b := mload(0x00)
        }
        if (!ok) revert TransferFailed();
    }

    /// token.transfer(to, amount), accepting tokens that return true or
    /// nothing (the constructor checked the token has code).
    function _pay(address to, uint256 amount) private {
        address t = token;
        bool ok;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, 0xa9059cbb00000000000000000000000000000000000000000000000000000000)
            mstore(add(p, 4), to)
            mstore(add(p, 36), amount)
            ok := call(gas(), t, 0, p, 68, 0x00, 0x20)
            ok := and(ok, or(iszero(returndatasize()), and(eq(returndatasize(), 32), eq(mload(0x00), 1))))
        }
        if (!ok) revert TransferFailed();
    }

    /// Map key: gateway in bits [64, 224), epoch in bits [0, 64). Injective.
    function _key(address gateway, uint64 epoch) private pure returns (uint256) {
        return (uint256(uint160(gateway)) << 64) | epoch;
    }
}
