//! `docs/language.md` is generated from the schema; this test fails when it is stale.
//! Regenerate with `UPDATE_DOCS=1 cargo test -p lortflow-lang --test docs`.

#[test]
fn language_reference_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/language.md");
    let generated = lortflow_lang::docs::language_reference();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).expect("docs/language.md should be writable");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/language.md is out of date with the schema; run `UPDATE_DOCS=1 cargo test -p lortflow-lang --test docs`"
    );
}
