//! Names the link and the field when a `[[links]]` entry does not parse (an unknown key, a
//! value of the wrong type, a missing field). The TOML parser alone reports only a line and a
//! column; a planner editing a 60-link file wants `link osaka-kyoto: field lenght_km: …`.

use std::collections::BTreeMap;

use kagi_quantum::tech::ParamValue;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::topology::{DeviceLinkSpec, LinkSpec, PhotonLinkSpec, TopologyError};

/// For a topology text that failed to deserialize: the first `[[links]]` entry that does not
/// parse on its own, as `BadField(a, b, field, why)`. `None` when the text is not TOML at all or
/// every link parses (the fault is elsewhere; the parser's own message then stands).
pub(crate) fn first_bad_link(text: &str) -> Option<TopologyError> {
    let doc: Table = toml::from_str(text).ok()?;
    let links = doc.get("links")?;
    let Some(links) = links.as_array() else {
        return Some(TopologyError::Parse(
            "links must be an array of tables ([[links]])".into(),
        ));
    };
    links.iter().enumerate().find_map(|(i, entry)| {
        let end = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_owned)
        };
        let (a, b) = (end("a"), end("b"));
        let (field, why) = bad_field(entry)?;
        Some(TopologyError::BadField(a, b, field, why))
    })
}

/// The first field of one link entry that does not deserialize, and why.
fn bad_field(entry: &Value) -> Option<(String, String)> {
    let Some(table) = entry.as_table() else {
        return Some((
            "(entry)".into(),
            "each [[links]] entry must be a table".into(),
        ));
    };
    for (key, value) in table {
        let nested = match key.as_str() {
            "photon" => sub_field::<PhotonLinkSpec>("photon", value),
            "device" => sub_field::<DeviceLinkSpec>("device", value),
            "params" => sub_field::<BTreeMap<String, ParamValue>>("params", value),
            _ => None,
        };
        if nested.is_some() {
            return nested;
        }
        // The key alone, beside placeholders for the required fields.
        let mut probe = Table::new();
        probe.insert("a".into(), Value::String("x".into()));
        probe.insert("b".into(), Value::String("y".into()));
        probe.insert("length_km".into(), Value::Float(1.0));
        probe.insert(key.clone(), value.clone());
        if let Err(e) = Value::Table(probe).try_into::<LinkSpec>() {
            return Some((key.clone(), message(&e)));
        }
    }
    // Every key parses alone: what is left is a missing field.
    let e = entry.clone().try_into::<LinkSpec>().err()?;
    let m = message(&e);
    let field = m
        .split('`')
        .nth(1)
        .map_or_else(|| "(entry)".to_owned(), str::to_owned);
    Some((field, m))
}

/// The first key of a sub-table (`[links.photon]`, `[links.device]`, `[links.params]`) that
/// does not deserialize, named `table.key`.
fn sub_field<T: DeserializeOwned>(name: &str, value: &Value) -> Option<(String, String)> {
    let Some(table) = value.as_table() else {
        return Some((name.into(), format!("must be a table ([links.{name}])")));
    };
    for (key, v) in table {
        let mut probe = Table::new();
        probe.insert(key.clone(), v.clone());
        if let Err(e) = Value::Table(probe).try_into::<T>() {
            return Some((format!("{name}.{key}"), message(&e)));
        }
    }
    None
}

/// The deserializer's message on one line, without the TOML parser's source excerpt.
fn message(e: &toml::de::Error) -> String {
    e.message().trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use crate::Topology;

    const T: &str = r#"
        [[nodes]]
        id = "a"
        saes = ["sa"]
        [[nodes]]
        id = "b"
        saes = ["sb"]
        [[links]]
        a = "a"
        b = "b"
        length_km = 10.0
    "#;

    #[test]
    fn unknown_keys_and_wrong_types_name_the_link_and_field() {
        for (extra, field, why) in [
            ("lenght_km = 3.0\n", "field lenght_km", "unknown field"),
            ("cost = \"cheap\"\n", "field cost", "invalid type"),
            ("seed = -3\n", "field seed", ""),
            ("source = 7\n", "field source", "invalid type"),
            ("protocol = [1]\n", "field protocol", "invalid type"),
            ("photon = 1\n", "field photon", "must be a table"),
            (
                "[links.photon]\nblock_bitz = 1e6\n",
                "field photon.block_bitz",
                "unknown field",
            ),
            (
                "[links.photon]\ne_d = \"low\"\n",
                "field photon.e_d",
                "invalid type",
            ),
            (
                "[links.device]\nurl = \"https://h:1\"\n",
                "field device.url",
                "unknown field",
            ),
            (
                "[links.device]\nkey_bits = 2.5\n",
                "field device.key_bits",
                "invalid type",
            ),
            (
                "[links.device]\nsimulated = \"yes\"\n",
                "field device.simulated",
                "invalid type",
            ),
            ("[links.params]\nmu = [0.5]\n", "field params.mu", ""),
            ("params = 3\n", "field params", "must be a table"),
        ] {
            let text = format!("{T}{extra}");
            let err = Topology::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("link a-b: ") && err.contains(field) && err.contains(why),
                "{extra}: {err}"
            );
        }
        for (from, to, field) in [
            ("length_km = 10.0", "length_km = \"ten\"", "field length_km"),
            ("length_km = 10.0", "", "field length_km"),
            ("b = \"b\"", "b = 2", "field b"),
        ] {
            let err = Topology::from_toml(&T.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("link a-") && err.contains(field), "{err}");
        }
        // The second link is the bad one: it is the one named.
        let two = format!(
            "{}[[nodes]]\nid = \"c\"\n[[links]]\na = \"b\"\nb = \"c\"\nlength_km = 1\ncolour = \"red\"\n",
            T.replace("[[links]]", "[[links]]\ncost = 2.0")
        );
        let err = Topology::from_toml(&two).unwrap_err().to_string();
        assert!(err.starts_with("link b-c: field colour"), "{err}");
        // Faults outside the links keep the parser's own message.
        let err = Topology::from_toml(&format!("colour = 1\n{T}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
