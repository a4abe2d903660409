//! The method table: names to handlers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::handler::{
    BoxStream, CallParts, NotifyHandler, Reply, RequestHandler, Started, StreamHandler,
};
use super::schema::{ContractSchema, ServedBy};
use crate::metrics::MethodMeter;
use crate::principal::Principal;
use plexus_protocol::ErrorBody;

type ErasedRequest = Arc<dyn Fn(CallParts) -> Started<Reply> + Send + Sync>;
type ErasedNotify = Arc<dyn Fn(CallParts) -> Started<Result<(), ErrorBody>> + Send + Sync>;
type ErasedStream =
    Arc<dyn Fn(CallParts) -> Started<Result<BoxStream<Reply>, ErrorBody>> + Send + Sync>;

/// What a method is.
#[derive(Clone)]
pub(crate) enum Method {
    Request(ErasedRequest),
    Notify(ErasedNotify),
    Stream(ErasedStream),
}

impl Method {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Method::Request(_) => "request",
            Method::Notify(_) => "notification",
            Method::Stream(_) => "stream",
        }
    }
}

/// Who may call a method, as declared where it is registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Nothing declared: allowed, and listed by [`Router::undeclared_methods`] (strict mode
    /// refuses to start).
    Undeclared,
    /// Declared open to every connection, anonymous ones included.
    Public,
    /// Only connections whose principal holds this permission.
    Required(Arc<str>),
}

impl Permission {
    /// The permission required, if any.
    pub(crate) fn required(&self) -> Option<&Arc<str>> {
        match self {
            Permission::Required(permission) => Some(permission),
            _ => None,
        }
    }

    /// Whether every connection may call the method.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self, Permission::Required(_))
    }

    /// Whether `principal` may call a method with this permission.
    pub(crate) fn allows(&self, principal: &Principal) -> bool {
        match self {
            Permission::Undeclared | Permission::Public => true,
            Permission::Required(permission) => principal.can(permission),
        }
    }
}

#[derive(Clone)]
struct Entry {
    method: Method,
    permission: Permission,
    /// Its series, registered at its first call.
    meter: OnceLock<Arc<MethodMeter>>,
}

/// A [`Router::requires_all`] rule: a name or a `prefix*`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    prefix: Arc<str>,
    wildcard: bool,
    permission: Permission,
}

impl Rule {
    fn new(pattern: &str, permission: Permission) -> Self {
        let (prefix, wildcard) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (pattern, false),
        };
        Rule {
            prefix: prefix.into(),
            wildcard,
            permission,
        }
    }

    fn pattern(&self) -> String {
        if self.wildcard {
            format!("{}*", self.prefix)
        } else {
            self.prefix.to_string()
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.starts_with(&*self.prefix)
        } else {
            name == &*self.prefix
        }
    }
}

/// Maps method names (`service.method`) to handlers.
///
/// Each method can declare, where it is registered, who may call it: chain
/// [`requires`](Self::requires) (a permission the connection's
/// [`Principal`](crate::Principal) must hold) or [`public`](Self::public) (anyone) right
/// after [`request`](Self::request), [`notify`](Self::notify) or [`stream`](Self::stream).
/// [`requires_all`](Self::requires_all) covers a whole family (`admin.*`). A method with no
/// declaration is allowed to everyone, but [`undeclared_methods`](Self::undeclared_methods)
/// lists it, so that strict mode can refuse to start until every method says who may call
/// it. A call without the permission gets `FORBIDDEN`.
///
/// ```
/// use plexus_server::{Router, RpcError};
///
/// let router = Router::new()
///     .request("sys.ping", |_: ()| async { Ok::<_, RpcError>("pong") })
///     .public()
///     .request("admin.kick", |user: String| async move { Ok::<_, RpcError>(user) })
///     .requires("admin")
///     .request("admin.stats", |_: ()| async { Ok::<_, RpcError>(0) })
///     .requires_all("admin.*", "admin");
/// assert!(router.undeclared_methods().is_empty());
/// ```
///
/// ```
/// use plexus_server::{CallContext, Router, RpcError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// let router = Router::new()
///     .request("math.add", |p: Add| async move { Ok::<_, RpcError>(p.a + p.b) })
///     .request("who.am_i", |ctx: CallContext, _: ()| async move {
///         Ok::<_, RpcError>(ctx.connection_id().to_owned())
///     });
/// assert!(router.contains("math.add"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    methods: HashMap<Arc<str>, Entry>,
    /// The method registered last, for `requires` and `public`.
    last: Option<Arc<str>>,
    /// `requires_all` rules, longest prefix first (exact names before patterns).
    rules: Vec<Rule>,
    /// The contracts `$contracts` lists.
    contracts: Vec<Arc<ContractSchema>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut methods: Vec<_> = self
            .methods
            .iter()
            .map(|(name, entry)| (name, entry.method.kind(), &entry.permission))
            .collect();
        methods.sort_unstable_by_key(|(name, _, _)| *name);
        f.debug_struct("Router")
            .field("methods", &methods)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(mut self, name: &str, method: Method) -> Self {
        self.insert_entry(
            name.into(),
            Entry {
                method,
                permission: Permission::Undeclared,
                meter: OnceLock::new(),
            },
        );
        self
    }

    fn insert_entry(&mut self, name: Arc<str>, entry: Entry) {
        assert!(
            !name.is_empty() && !name.starts_with('$'),
            "method names must be non-empty and not start with `$` (reserved): {name:?}"
        );
        if self.methods.insert(name.clone(), entry).is_some() {
            panic!("method {name:?} registered twice");
        }
        self.last = Some(name);
    }

    fn declare(mut self, permission: Permission, what: &str) -> Self {
        let Some(name) = self.last.clone() else {
            panic!(
                "`{what}` applies to the method registered just before it: call it right after \
                 `request`, `notify` or `stream`"
            );
        };
        let entry = self
            .methods
            .get_mut(&name)
            .expect("the last method is registered");
        if entry.permission != Permission::Undeclared {
            panic!("method {name:?} already declares who may call it");
        }
        entry.permission = permission;
        self
    }

    /// Declares that the method registered just before needs `permission`: only
    /// connections whose [`Principal`](crate::Principal) holds it may call it; others get
    /// `FORBIDDEN`.
    ///
    /// Panics (a programming error) if no method was registered just before (on a new
    /// router, or right after [`merge`](Self::merge)), if that method already declared its
    /// permission, or if `permission` is empty.
    pub fn requires(self, permission: &str) -> Self {
        assert!(!permission.is_empty(), "permission names must be non-empty");
        self.declare(Permission::Required(permission.into()), "requires")
    }

    /// Declares that the method registered just before may be called by every connection,
    /// anonymous ones included. Panics like [`requires`](Self::requires).
    pub fn public(self) -> Self {
        self.declare(Permission::Public, "public")
    }

    /// Declares that every method named `pattern` (`"admin.*"`: every name starting with
    /// `admin.`; `"*"`: every method; otherwise one exact name) needs `permission`,
    /// whenever it is registered. A method's own [`requires`](Self::requires) or
    /// [`public`](Self::public) wins over a rule, and the most specific rule (an exact name,
    /// then the longest prefix) over others. Declaring the same pattern again replaces its
    /// permission. Panics if `permission` or `pattern` is empty.
    pub fn requires_all(mut self, pattern: &str, permission: &str) -> Self {
        assert!(!permission.is_empty(), "permission names must be non-empty");
        assert!(!pattern.is_empty(), "method patterns must be non-empty");
        self.add_rule(
            Rule::new(pattern, Permission::Required(permission.into())),
            true,
        );
        self
    }

    fn add_rule(&mut self, rule: Rule, replace: bool) {
        if let Some(existing) = self
            .rules
            .iter_mut()
            .find(|r| r.prefix == rule.prefix && r.wildcard == rule.wildcard)
        {
            if !replace && existing.permission != rule.permission {
                panic!(
                    "both routers declare a permission for {:?}: {:?} and {:?}",
                    rule.pattern(),
                    existing.permission,
                    rule.permission
                );
            }
            existing.permission = rule.permission;
            return;
        }
        self.rules.push(rule);
        // Exact names first, then longer prefixes: the first match is the most specific.
        self.rules.sort_by(|a, b| {
            a.wildcard
                .cmp(&b.wildcard)
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
    }

    /// Registers a request handler. Panics if the name is taken or reserved.
    pub fn request<M, H: RequestHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Request(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Registers a notification handler. Panics if the name is taken or reserved.
    pub fn notify<M, H: NotifyHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Notify(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Registers a stream handler. Panics if the name is taken or reserved.
    pub fn stream<M, H: StreamHandler<M>>(self, name: &str, handler: H) -> Self {
        self.insert(
            name,
            Method::Stream(Arc::new(move |parts| handler.start(parts))),
        )
    }

    /// Adds every method of `other`, with its declared permission, and `other`'s
    /// [`requires_all`](Self::requires_all) rules. Panics on a name registered in both, or a
    /// pattern both declare with different permissions. [`requires`](Self::requires) and
    /// [`public`](Self::public) cannot follow a merge.
    pub fn merge(mut self, other: Router) -> Self {
        for (name, entry) in other.methods {
            self.insert_entry(name, entry);
        }
        for rule in other.rules {
            self.add_rule(rule, false);
        }
        for contract in other.contracts {
            self.add_contract(contract);
        }
        self.last = None;
        self
    }

    /// Lists `contract` in the answers to `$contracts` (a router made by
    /// `<Trait>Contract::router` lists its own; describe here a contract the server calls on
    /// its clients, `<Trait>Contract::client_schema()`). Each connection sees the methods
    /// of server-served contracts it may call. Panics if a contract of that name and side is
    /// described already.
    pub fn describe(mut self, contract: ContractSchema) -> Self {
        self.add_contract(Arc::new(contract));
        self
    }

    fn add_contract(&mut self, contract: Arc<ContractSchema>) {
        if self
            .contracts
            .iter()
            .any(|c| c.name == contract.name && c.served_by == contract.served_by)
        {
            panic!("contract {:?} described twice", contract.name);
        }
        self.contracts.push(contract);
    }

    /// The contracts as `principal` sees them: of those the server serves, only the methods
    /// it may call and the types they use (a contract with none is left out).
    pub(crate) fn contracts_for(&self, principal: &Principal) -> Vec<ContractSchema> {
        self.contracts
            .iter()
            .filter_map(|contract| {
                let mut visible = ContractSchema::clone(contract);
                if visible.served_by == ServedBy::Server {
                    // What a caller may not call is not shown, nor the types only it uses.
                    visible.retain_methods(|method| {
                        self.methods
                            .get_key_value(method.name.as_str())
                            .is_some_and(|(name, entry)| {
                                self.effective(name, &entry.permission).allows(principal)
                            })
                    });
                    if visible.methods.is_empty() {
                        return None;
                    }
                }
                Some(visible)
            })
            .collect()
    }

    /// Whether a method of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// Who may call `name`: its own declaration, else the most specific
    /// [`requires_all`](Self::requires_all) rule, else [`Permission::Undeclared`]. `None`
    /// if no such method is registered.
    #[cfg(test)]
    pub(crate) fn permission(&self, name: &str) -> Option<&Permission> {
        self.methods
            .get_key_value(name)
            .map(|(name, entry)| self.effective(name, &entry.permission))
    }

    /// The method and who may call it, in one lookup.
    pub(crate) fn get_with_permission(
        &self,
        name: &str,
    ) -> Option<(&Method, &Permission, &Arc<MethodMeter>)> {
        self.methods.get_key_value(name).map(|(name, entry)| {
            let meter = entry.meter.get_or_init(|| Arc::new(MethodMeter::new(name)));
            (
                &entry.method,
                self.effective(name, &entry.permission),
                meter,
            )
        })
    }

    fn effective<'a>(&'a self, name: &str, own: &'a Permission) -> &'a Permission {
        match own {
            Permission::Undeclared => self
                .rules
                .iter()
                .find(|rule| rule.matches(name))
                .map_or(own, |rule| &rule.permission),
            declared => declared,
        }
    }

    /// The methods that declare no permission, by themselves or through a
    /// [`requires_all`](Self::requires_all) rule, sorted by name. Strict mode refuses to
    /// start while any is left.
    pub fn undeclared_methods(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .methods
            .iter()
            .filter(|(name, entry)| {
                *self.effective(name, &entry.permission) == Permission::Undeclared
            })
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RpcError;

    fn ok(_: ()) -> std::future::Ready<Result<(), RpcError>> {
        std::future::ready(Ok(()))
    }

    fn permission(router: &Router, name: &str) -> Permission {
        router.permission(name).cloned().expect("registered")
    }

    fn required(p: &str) -> Permission {
        Permission::Required(p.into())
    }

    #[test]
    fn declarations_apply_to_the_method_just_registered() {
        let router = Router::new()
            .request("a.public", ok)
            .public()
            .request("a.secret", ok)
            .requires("secret")
            .notify("a.note", |_: ()| async {})
            .requires("notes")
            .stream("a.feed", |_: ()| async {
                Ok::<_, RpcError>(futures_util::stream::empty::<Result<u8, RpcError>>())
            })
            .requires("feed")
            .request("a.open", ok);
        assert_eq!(permission(&router, "a.public"), Permission::Public);
        assert_eq!(permission(&router, "a.secret"), required("secret"));
        assert_eq!(permission(&router, "a.note"), required("notes"));
        assert_eq!(permission(&router, "a.feed"), required("feed"));
        assert_eq!(permission(&router, "a.open"), Permission::Undeclared);
        assert!(router.permission("a.none").is_none());
        assert_eq!(router.undeclared_methods(), ["a.open"]);
        let (method, perm, _) = router.get_with_permission("a.feed").unwrap();
        assert_eq!((method.kind(), perm), ("stream", &required("feed")));
        assert_eq!(
            router
                .get_with_permission("a.note")
                .map(|(m, _, _)| m.kind()),
            Some("notification")
        );
    }

    #[test]
    fn permissions_are_checked_against_the_principal() {
        let admin = Principal::user("ann", ["admin".to_owned()]);
        let user = Principal::user("bob", ["chat".to_owned()]);
        let anonymous = Principal::anonymous();
        for p in [&admin, &user, &anonymous] {
            assert!(Permission::Public.allows(p));
            assert!(Permission::Undeclared.allows(p));
        }
        assert!(required("admin").allows(&admin));
        assert!(!required("admin").allows(&user));
        assert!(!required("admin").allows(&anonymous));
    }

    #[test]
    #[should_panic(expected = "right after `request`, `notify` or `stream`")]
    fn requires_without_a_method_panics() {
        let _ = Router::new().requires("x");
    }

    #[test]
    #[should_panic(expected = "right after `request`, `notify` or `stream`")]
    fn public_after_merge_panics() {
        let _ = Router::new().merge(Router::new().request("a", ok)).public();
    }

    #[test]
    #[should_panic(expected = "already declares who may call it")]
    fn declaring_twice_panics() {
        let _ = Router::new().request("a", ok).public().requires("x");
    }

    #[test]
    #[should_panic(expected = "permission names must be non-empty")]
    fn an_empty_permission_panics() {
        let _ = Router::new().request("a", ok).requires("");
    }

    #[test]
    fn rules_cover_families_and_own_declarations_win() {
        let router = Router::new()
            .requires_all("admin.*", "admin")
            .requires_all("admin.audit.*", "auditor")
            .requires_all("admin.audit.read", "reader")
            .request("admin.kick", ok)
            .request("admin.ping", ok)
            .public()
            .request("admin.audit.list", ok)
            .request("admin.audit.read", ok)
            .request("admins", ok)
            .request("user.me", ok)
            .requires_all("user.me", "user");
        assert_eq!(permission(&router, "admin.kick"), required("admin"));
        assert_eq!(permission(&router, "admin.ping"), Permission::Public);
        assert_eq!(permission(&router, "admin.audit.list"), required("auditor"));
        assert_eq!(permission(&router, "admin.audit.read"), required("reader"));
        assert_eq!(permission(&router, "admins"), Permission::Undeclared);
        assert_eq!(permission(&router, "user.me"), required("user"));
        assert_eq!(router.undeclared_methods(), ["admins"]);
        let everything = router.requires_all("*", "member");
        assert_eq!(permission(&everything, "admins"), required("member"));
        assert_eq!(permission(&everything, "admin.kick"), required("admin"));
        assert!(everything.undeclared_methods().is_empty());
        // The same pattern again replaces its permission.
        let replaced = everything.requires_all("*", "staff");
        assert_eq!(permission(&replaced, "admins"), required("staff"));
    }

    #[test]
    fn merge_keeps_declarations_and_rules() {
        let a = Router::new()
            .request("a.one", ok)
            .requires("x")
            .request("a.two", ok);
        let b = Router::new()
            .request("b.one", ok)
            .public()
            .request("b.two", ok)
            .requires_all("b.*", "bee");
        let merged = a.merge(b).requires_all("b.*", "bee");
        assert_eq!(permission(&merged, "a.one"), required("x"));
        assert_eq!(permission(&merged, "a.two"), Permission::Undeclared);
        assert_eq!(permission(&merged, "b.one"), Permission::Public);
        assert_eq!(permission(&merged, "b.two"), required("bee"));
        assert_eq!(merged.undeclared_methods(), ["a.two"]);
        // Registration after a merge can be declared again.
        let more = merged.request("c", ok).public();
        assert_eq!(permission(&more, "c"), Permission::Public);
    }

    #[test]
    #[should_panic(expected = "both routers declare a permission for \"b.*\"")]
    fn merge_refuses_conflicting_rules() {
        let _ = Router::new()
            .requires_all("b.*", "one")
            .merge(Router::new().requires_all("b.*", "two"));
    }
}
