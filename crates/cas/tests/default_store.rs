//! `DefaultStore::locate`: the `cas` command's rule for the store a program uses when given
//! none. One test in its own binary: it changes the environment.

#[test]
fn the_default_store_follows_cas_store_then_xdg_then_home() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::env::set_var("CAS_STORE", d.join("explicit"));
    std::env::set_var("XDG_CACHE_HOME", d.join("xdg"));
    std::env::set_var("HOME", d.join("home"));
    let s = cas::DefaultStore::locate().unwrap();
    assert_eq!(s.path, d.join("explicit"));
    assert_eq!(s.create, cas::Create::IfMissing);

    std::env::set_var("CAS_STORE", "");
    let s = cas::DefaultStore::locate().unwrap();
    assert_eq!(s.path, d.join("xdg").join("cas"));
    assert_eq!(s.create, cas::Create::IfMissingOrEmpty);

    std::env::remove_var("CAS_STORE");
    std::env::remove_var("XDG_CACHE_HOME");
    let s = cas::DefaultStore::locate().unwrap();
    assert_eq!(s.path, d.join("home").join(".cache").join("cas"));
    assert_eq!(cas::DefaultStore::per_user().unwrap(), s.path);

    std::env::remove_var("HOME");
    let e = cas::DefaultStore::locate().unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.to_string().contains("CAS_STORE"), "{e}");
}
