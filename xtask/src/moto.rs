pub fn setup(_: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}
