// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title SurgeToken: a minimal, fixed-supply ERC-20 that SurgeRewards pays out.
/// @notice The whole supply is minted once, to the deployer, who funds the
/// rewards contract with a transfer. No mint, burn, pause or owner: what is
/// claimable can only ever come out of the rewards contract's balance.
///
/// One deliberate departure from the commonest implementation: an allowance
/// of type(uint256).max is treated as unlimited and never written back, so an
/// "approve once" spender does not pay a storage write per transferFrom.
contract SurgeToken {
    string public constant name = "Surge Reward";
    string public constant symbol = "SURGE";
    uint8 public constant decimals = 18;

    uint256 public immutable totalSupply;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error InsufficientBalance(address from, uint256 balance, uint256 needed);
    error InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
    error InvalidReceiver(address to);

    constructor(uint256 supply) {
        totalSupply = supply;
        balanceOf[msg.sender] = supply;
        emit Transfer(address(0), msg.sender, supply);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(msg.sender, allowed, value);
            unchecked {
                allowance[from][msg.sender] = allowed - value;
            }
        }
        _move(from, to, value);
        return true;
    }

    function _move(address from, address to, uint256 value) private {
        // Tokens sent to address(0) or to this contract could never move again.
        if (to == address(0) || to == address(this)) revert InvalidReceiver(to);
        uint256 balance = balanceOf[from];
        if (balance < value) revert InsufficientBalance(from, balance, value);
        unchecked {
            // Cannot underflow (checked above) nor overflow (the sum of all
            // balances is totalSupply).
            balanceOf[from] = balance - value;
            balanceOf[to] += value;
        }
        emit Transfer(from, to, value);
    }
}
