//! `#[plexus::contract]` misused: each case under `tests/ui` must fail to compile with the
//! message beside it, pointing at the method at fault.

#[test]
fn misused_contracts_fail_to_compile_with_a_message_that_says_why() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
