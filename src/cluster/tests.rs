use super::*;

#[test]
fn membership_packs_and_passwords_are_found() {
    for m in [
        Membership {
            replicas: 1,
            rank: 0,
        },
        Membership {
            replicas: 300,
            rank: 299,
        },
    ] {
        assert_eq!(Membership::unpack(m.pack()), m);
    }
    for (url, want) in [
        ("redis://:pw@h:6379/0", Some("pw")),
        ("redis://user:p%40ss@h/0", Some("p%40ss")),
        ("rediss://user@h/0", None),
        ("redis://h:6379/0", None),
        ("redis://h/0?x=a:b@c", None),
    ] {
        assert_eq!(password_of(url).as_deref(), want, "{url}");
    }
    assert!(replica_id().len() > 8);
}
