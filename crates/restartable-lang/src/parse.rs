//! From the `section!` input (a Rust `unsafe fn` in the restricted
//! language) to a [`Section`], with every check of the language made here,
//! each error pointing at the offending token.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{BinOp, Expr, Lit, Pat, ReturnType, Stmt, Token};

use crate::ir::*;

/// How strictly to check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every rule of the language.
    Checked,
    /// For the model checker's deliberately broken sections only: a read id
    /// needs no range check, speculative stores need no owner, and a commit
    /// followed by more body becomes a plain store.
    Unchecked,
}

fn err<T>(at: impl ToTokens, msg: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new_spanned(at, msg))
}

/// Parses and checks a section.
pub(crate) fn section(tokens: TokenStream, mode: Mode) -> syn::Result<Section> {
    let source = tokens.to_string();
    let item: syn::ItemFn = syn::parse2(tokens)?;
    let mut p = Parser::new(mode);
    let mut attrs = Vec::new();
    let mut index = None;
    let mut owned = Vec::new();
    for attr in &item.attrs {
        let path = attr.path();
        if path.is_ident("index") {
            let id: syn::Ident = attr.parse_args()?;
            index = Some(match id.to_string().as_str() {
                "cpu_id" => IdKind::Cpu,
                "mm_cid" => IdKind::MmCid,
                _ => return err(&id, "the index is `cpu_id` or `mm_cid`"),
            });
        } else if path.is_ident("exits") {
            let list =
                attr.parse_args_with(Punctuated::<syn::Variant, Token![,]>::parse_terminated)?;
            for v in list {
                let fields = match &v.fields {
                    syn::Fields::Unit => Vec::new(),
                    syn::Fields::Unnamed(f) => f.unnamed.iter().map(|f| f.ty.clone()).collect(),
                    syn::Fields::Named(_) => {
                        return err(&v, "exit values are unnamed: `Full(u64)`")
                    }
                };
                if p.exits.iter().any(|e: &ExitDecl| e.name == v.ident) {
                    return err(&v.ident, "this exit is declared twice");
                }
                p.exits.push(ExitDecl {
                    name: v.ident,
                    fields,
                });
            }
        } else if path.is_ident("order") {
            // The commit's order for a `commit!` that names none (so one
            // body can be expanded in both orders).
            let id: syn::Ident = attr.parse_args()?;
            p.default_release = match id.to_string().as_str() {
                "relaxed" => false,
                "release" => true,
                _ => return err(&id, "the commit's order is `relaxed` or `release`"),
            };
        } else if path.is_ident("owned") {
            let list =
                attr.parse_args_with(Punctuated::<syn::Ident, Token![,]>::parse_terminated)?;
            owned.extend(list.into_iter().map(|i| i.to_string()));
        } else {
            attrs.push(attr.clone());
        }
    }
    let sig = &item.sig;
    let Some(index) = index else {
        return err(
            &sig.ident,
            "a section names its id: `#[index(cpu_id)]` or `#[index(mm_cid)]`",
        );
    };
    if sig.unsafety.is_none() {
        return err(
            sig.fn_token,
            "a section is an `unsafe fn`: its inputs are memory the caller vouches for",
        );
    }
    if let Some(abi) = &sig.abi {
        return err(
            abi,
            "a section has the Rust ABI: it is expanded into a module, not a function",
        );
    }
    if let Some(w) = &sig.generics.where_clause {
        return err(w, "a section has no `where` clause");
    }
    if let Some(a) = sig.asyncness {
        return err(a, "a section is not `async`");
    }
    if let Some(c) = sig.constness {
        return err(c, "a section is not `const`");
    }
    if !sig.generics.params.is_empty() {
        return err(
            &sig.generics,
            "a section has no generics and is neither `async` nor `const`",
        );
    }
    p.owned = owned;
    for arg in &sig.inputs {
        let syn::FnArg::Typed(pt) = arg else {
            return err(arg, "a section takes no `self`");
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return err(&pt.pat, "inputs are plain names");
        };
        let input = pi.ident.to_string();
        let reserved = ["run", "retry", "twin", "attempt", "Exit", "Value", "SOURCE"];
        if input.starts_with("__") || reserved.contains(&input.as_str()) {
            return err(&pi.ident, "this name is the expansion's own (`run`, `retry`, `twin`, `attempt`, `Exit`, `Value`, `SOURCE` and names starting with `__`)");
        }
        let n = p.inputs.len();
        p.inputs.push(Input {
            name: pi.ident.clone(),
            ty: (*pt.ty).clone(),
        });
        let v = p.new_value(pi.ident.to_string(), ValKind::Input(n));
        p.owned_vals.push(p.owned.contains(&pi.ident.to_string()));
        debug_assert_eq!(p.owned_vals.len(), v + 1);
        p.names.insert(pi.ident.to_string(), v);
    }
    let ret = match &sig.output {
        ReturnType::Default => Vec::new(),
        ReturnType::Type(_, ty) => match &**ty {
            syn::Type::Tuple(t) => t.elems.iter().cloned().collect(),
            ty => vec![ty.clone()],
        },
    };
    let stmts = &item.block.stmts;
    let mut i = 0;
    let mut commit_at: Option<Span> = None;
    while i < stmts.len() {
        let stmt = &stmts[i];
        i += 1;
        if commit_at.is_some() {
            // Only the committed value may follow the commit.
            if let Stmt::Expr(e, None) = stmt {
                if i == stmts.len() && is_commit(stmt).is_none() {
                    p.ret_vals = p.return_values(e, ret.len())?;
                    continue;
                }
            }
            if p.mode == Mode::Unchecked && is_commit(stmt).is_some() {
                p.demote_commit();
            } else if is_commit(stmt).is_some() {
                return err(stmt, "a second commit: a section publishes its effect with exactly one store, its last (the first would publish while the section can still abort)");
            } else {
                return err(stmt, "nothing may follow the commit: it is the section's last store (a second commit, or any other step, would run after the section's effect is published)");
            }
        }
        match stmt {
            Stmt::Local(local) => {
                let Pat::Ident(pi) = &local.pat else {
                    return err(&local.pat, "`let` binds a plain name");
                };
                let Some(init) = &local.init else {
                    return err(local, "`let` needs a value");
                };
                if init.diverge.is_some() {
                    return err(local, "`let ... else` is outside the section language");
                }
                let name = pi.ident.to_string();
                if is_call(&init.expr, "current_id") {
                    let next = stmts.get(i);
                    if p.read_id(&pi.ident, &init.expr, next)? {
                        i += 1;
                    }
                    continue;
                }
                let fresh = p.values.len();
                let v = p.value(&init.expr)?;
                if v < fresh && p.owned.contains(&name) {
                    return err(&init.expr, format!("`{name}` is owned (`#[owned(..)]`), so it must be bound to a new address computed here, not to a value that already names other memory"));
                }
                let v = p.bind(&name, v);
                p.names.insert(name, v);
            }
            Stmt::Expr(Expr::If(e), _) => p.exit_if(e)?,
            Stmt::Expr(e, _) if is_loop(e) => return err(e, LOOP),
            Stmt::Expr(e, Some(_)) => p.effect(e)?,
            Stmt::Macro(m) if m.mac.path.is_ident("commit") => {
                p.commit(&m.mac)?;
                commit_at = Some(m.span());
            }
            Stmt::Expr(Expr::Macro(m), None) if m.mac.path.is_ident("commit") => {
                p.commit(&m.mac)?;
                commit_at = Some(m.span());
            }
            Stmt::Macro(m) if m.mac.path.is_ident("exit") => {
                return err(
                    m,
                    "an exit is taken by a comparison: `if a == b { exit!(Name) }`",
                );
            }
            Stmt::Expr(e, None) => {
                return err(
                    e,
                    "a value here must follow the commit (it is what the section returns)",
                )
            }
            Stmt::Item(it) => return err(it, "items are outside the section language"),
            Stmt::Macro(m) => {
                return err(
                    &m.mac.path,
                    "macros other than `exit!` and `commit!` are outside the section language",
                )
            }
        }
    }
    if commit_at.is_none() {
        return err(
            &sig.ident,
            "this section has no commit: its last step must be `commit!(store64(addr, value))`",
        );
    }
    if p.ret_vals.len() != ret.len() {
        return err(
            &sig.output,
            format!(
                "the section returns {} value(s): end the body, after the commit, with them",
                ret.len()
            ),
        );
    }
    Ok(Section {
        attrs,
        vis: item.vis.clone(),
        name: sig.ident.clone(),
        index,
        inputs: p.inputs,
        consts: p.consts,
        values: p.values,
        exits: p.exits,
        ret,
        ret_vals: p.ret_vals,
        ops: p.ops,
        owned: p.owned_vals,
        spans: p.spans,
        source,
    })
}

const LOOP: &str = "loops are outside the section language: its one loop is the bounded copy, `copy(dst, src, len)`";

fn is_loop(e: &Expr) -> bool {
    matches!(e, Expr::Loop(_) | Expr::While(_) | Expr::ForLoop(_))
}

fn is_call(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Call(c) if matches!(&*c.func, Expr::Path(p) if p.path.is_ident(name)))
}

fn is_commit(stmt: &Stmt) -> Option<&syn::Macro> {
    match stmt {
        Stmt::Macro(m) if m.mac.path.is_ident("commit") => Some(&m.mac),
        Stmt::Expr(Expr::Macro(m), _) if m.mac.path.is_ident("commit") => Some(&m.mac),
        _ => None,
    }
}

/// A literal integer, if `e` is one.
/// The expression inside the invisible group a `macro_rules!` `$e:expr`
/// fragment arrives in.
fn ungroup(e: &Expr) -> &Expr {
    match e {
        Expr::Group(g) => ungroup(&g.expr),
        e => e,
    }
}

fn literal(e: &Expr) -> Option<syn::Result<u64>> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => Some(i.base10_parse::<u64>()),
            _ => None,
        },
        Expr::Paren(p) => literal(&p.expr),
        Expr::Group(g) => literal(&g.expr),
        _ => None,
    }
}

/// The access a call names: (width, signed, acquire), for loads.
fn load_kind(name: &str) -> Option<(Width, bool, bool)> {
    let (acquire, rest) = match name.strip_prefix("load_acquire") {
        Some(rest) => (true, rest),
        None => (false, name.strip_prefix("load")?),
    };
    let (signed, rest) = match rest.strip_prefix("_signed") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let width = match rest.trim_start_matches('_') {
        "8" => Width::W8,
        "16" => Width::W16,
        "32" => Width::W32,
        "64" => Width::W64,
        "ptr" if !signed => Width::W64,
        _ => return None,
    };
    (!(signed && width == Width::W64)).then_some((width, signed, acquire))
}

fn store_width(name: &str) -> Option<Width> {
    match name {
        "store8" => Some(Width::W8),
        "store16" => Some(Width::W16),
        "store32" => Some(Width::W32),
        "store64" | "store_ptr" => Some(Width::W64),
        _ => None,
    }
}

struct Parser {
    mode: Mode,
    /// The commit's order when `commit!` names none (`#[order(..)]`).
    default_release: bool,
    inputs: Vec<Input>,
    consts: Vec<TokenStream>,
    values: Vec<Value>,
    /// Per value: derived from memory the section owns until it commits.
    owned_vals: Vec<bool>,
    owned: Vec<String>,
    exits: Vec<ExitDecl>,
    names: HashMap<String, Val>,
    ops: Vec<Op>,
    spans: Vec<Span>,
    ret_vals: Vec<Val>,
    id_read: bool,
}

impl Parser {
    fn new(mode: Mode) -> Self {
        Parser {
            mode,
            default_release: false,
            inputs: Vec::new(),
            consts: Vec::new(),
            values: Vec::new(),
            owned_vals: Vec::new(),
            owned: Vec::new(),
            exits: Vec::new(),
            names: HashMap::new(),
            ops: Vec::new(),
            spans: Vec::new(),
            ret_vals: Vec::new(),
            id_read: false,
        }
    }

    fn new_value(&mut self, name: String, kind: ValKind) -> Val {
        self.values.push(Value { name, kind });
        self.values.len() - 1
    }

    fn temp(&mut self, owned: bool) -> Val {
        let n = self.values.len();
        self.owned_vals.push(owned);
        self.new_value(format!("t{n}"), ValKind::Temp)
    }

    fn push(&mut self, op: Op, at: &impl Spanned) {
        self.ops.push(op);
        self.spans.push(at.span());
    }

    /// Gives a `let` its name; a name in `#[owned(..)]` marks its value owned.
    fn bind(&mut self, name: &str, v: Val) -> Val {
        if self.owned.iter().any(|o| o == name) {
            self.owned_vals[v] = true;
        }
        if self.values[v].kind == ValKind::Temp && self.values[v].name.starts_with('t') {
            self.values[v].name = name.to_string();
        }
        v
    }

    fn konst(&mut self, tokens: TokenStream) -> Val {
        let n = self.consts.len();
        self.consts.push(tokens);
        self.owned_vals.push(false);
        self.new_value(format!("c{n}"), ValKind::Const(n))
    }

    fn exit_named(&self, path: &syn::Path) -> syn::Result<usize> {
        let Some(id) = path.get_ident() else {
            return err(path, "an exit is one of the names in `#[exits(..)]`");
        };
        match self.exits.iter().position(|e| e.name == *id) {
            Some(n) => Ok(n),
            None => err(id, "no such exit: declare it in `#[exits(..)]`"),
        }
    }

    /// `let id = current_id();` and, checked, the range check that must
    /// follow it: `if id >= bound { exit!(Name) }` or `if id != expected
    /// { exit!(Name) }`. Returns whether it consumed that check.
    fn read_id(
        &mut self,
        name: &syn::Ident,
        call: &Expr,
        next: Option<&Stmt>,
    ) -> syn::Result<bool> {
        if self.id_read {
            return err(call, "the id is read once");
        }
        if let Expr::Call(c) = call {
            if !c.args.is_empty() {
                return err(&c.args, "`current_id()` takes no arguments");
            }
        }
        self.id_read = true;
        let check = next.and_then(|s| match s {
            Stmt::Expr(Expr::If(e), _) => Some(e),
            _ => None,
        });
        let bounded = check.and_then(|e| {
            let Expr::Binary(b) = &*e.cond else {
                return None;
            };
            let is_id = matches!(&*b.left, Expr::Path(p) if p.path.is_ident(name));
            (is_id && matches!(b.op, BinOp::Ge(_) | BinOp::Ne(_)) && e.else_branch.is_none())
                .then_some((e, b))
        });
        let Some((e, b)) = bounded else {
            if self.mode == Mode::Unchecked {
                let dst = self.id_value(name);
                self.push(
                    Op::ReadId {
                        dst,
                        bound: None,
                        exit: usize::MAX,
                    },
                    call,
                );
                return Ok(false);
            }
            let at: &dyn ToTokens = match next {
                Some(s) => s,
                None => call,
            };
            return err(at, format!("the id must be range-checked right after it is read: `if {name} >= bound {{ exit!(OutOfRange) }}`, or compared with the id the caller chose its data by, `if {name} != expected {{ exit!(Moved) }}` (cpu_id is -1 in an unregistered area, and can exceed any array sized when the process started)"));
        };
        // `let n = current_id()` shadows an input `n`: as in Rust, the
        // check would compare the id with itself.
        if matches!(&*b.right, Expr::Path(p) if p.path.is_ident(name)) {
            return err(&b.right, format!("`{name}` names the id here (the `let` shadows the input): bind the id to another name"));
        }
        let bound = self.value(&b.right)?;
        let (exit, vals) = self.exit_body(&e.then_branch)?;
        if !vals.is_empty() {
            return err(&e.then_branch, "the range check's exit carries no values");
        }
        if matches!(b.op, BinOp::Ne(_)) {
            // `id != expected`: the caller read the id before and chose its
            // data by it, so equality is the range check, and from here on
            // the id is `expected`.
            self.push(
                Op::CheckId {
                    expect: bound,
                    exit,
                },
                call,
            );
            self.names.insert(name.to_string(), bound);
            return Ok(true);
        }
        let dst = self.id_value(name);
        self.push(
            Op::ReadId {
                dst,
                bound: Some(bound),
                exit,
            },
            call,
        );
        Ok(true)
    }

    fn id_value(&mut self, name: &syn::Ident) -> Val {
        let dst = self.temp(false);
        self.values[dst].name = name.to_string();
        self.names.insert(name.to_string(), dst);
        dst
    }

    /// The block of an `if`: exactly `exit!(Name)` or `exit!(Name(a, b))`.
    fn exit_body(&mut self, block: &syn::Block) -> syn::Result<(usize, Vec<Val>)> {
        let mac = match block.stmts.as_slice() {
            [Stmt::Macro(m)] => &m.mac,
            [Stmt::Expr(Expr::Macro(m), _)] => &m.mac,
            _ => return err(block, "the body of an `if` is one `exit!(Name)`"),
        };
        if !mac.path.is_ident("exit") {
            return err(&mac.path, "the body of an `if` is one `exit!(Name)`");
        }
        let e: Expr = mac.parse_body()?;
        let (path, args) = match &e {
            Expr::Path(p) => (&p.path, Vec::new()),
            Expr::Call(c) => match &*c.func {
                Expr::Path(p) => (&p.path, c.args.iter().collect()),
                f => return err(f, "an exit is one of the names in `#[exits(..)]`"),
            },
            e => return err(e, "an exit is `Name` or `Name(values)`"),
        };
        let n = self.exit_named(path)?;
        if args.len() != self.exits[n].fields.len() {
            return err(
                &e,
                format!(
                    "exit `{}` carries {} value(s)",
                    self.exits[n].name,
                    self.exits[n].fields.len()
                ),
            );
        }
        let vals = args
            .into_iter()
            .map(|a| self.value(a))
            .collect::<syn::Result<_>>()?;
        Ok((n, vals))
    }

    fn exit_if(&mut self, e: &syn::ExprIf) -> syn::Result<()> {
        if e.else_branch.is_some() {
            return err(
                e,
                "an `if` has no `else`: it leaves through an exit or falls through",
            );
        }
        let Expr::Binary(b) = ungroup(&e.cond) else {
            return err(
                &e.cond,
                "the condition is one comparison: `==`, `!=`, `<`, `<=`, `>`, `>=`",
            );
        };
        let unsigned = match b.op {
            BinOp::Eq(_) => Cond::Eq,
            BinOp::Ne(_) => Cond::Ne,
            BinOp::Lt(_) => Cond::Ltu,
            BinOp::Le(_) => Cond::Leu,
            BinOp::Gt(_) => Cond::Gtu,
            BinOp::Ge(_) => Cond::Geu,
            _ => {
                return err(
                    b.op,
                    "the condition is one comparison: `==`, `!=`, `<`, `<=`, `>`, `>=`",
                )
            }
        };
        let (l, r, signed) = match (signed_cast(&b.left), signed_cast(&b.right)) {
            (Some(l), Some(r)) => (l, r, true),
            (None, None) => (&*b.left, &*b.right, false),
            _ => {
                return err(
                    b,
                    "a signed comparison casts both sides: `(a as i64) < (b as i64)`",
                )
            }
        };
        let mut cond = if signed {
            match unsigned {
                Cond::Ltu => Cond::Lts,
                Cond::Leu => Cond::Les,
                Cond::Gtu => Cond::Gts,
                Cond::Geu => Cond::Ges,
                c => c,
            }
        } else {
            unsigned
        };
        if !self.id_read {
            // Comparing inputs alone is allowed, but gives nothing a section
            // could not do before it starts: ask for the id first.
            return err(
                e,
                "read the id first: `let id = current_id();` comes before every other step",
            );
        }
        let mut a = self.operand(l)?;
        let mut bo = self.operand(r)?;
        if matches!(a, Operand::Imm(_)) {
            std::mem::swap(&mut a, &mut bo);
            cond = cond.swap();
        }
        let a = self.force(a);
        let (exit, vals) = self.exit_body(&e.then_branch)?;
        self.push(
            Op::Exit {
                cond,
                a,
                b: bo,
                exit,
                vals,
            },
            e,
        );
        Ok(())
    }

    /// A statement with an effect: a speculative store or the copy.
    fn effect(&mut self, e: &Expr) -> syn::Result<()> {
        let e = ungroup(e);
        let Expr::Call(c) = e else {
            return match e {
                Expr::Assign(_) => err(e, "assignments are outside the section language: store with `store64(addr, value)`"),
                _ => err(e, "a statement is `let`, `if .. { exit!(..) }`, a store, `copy(..)` or `commit!(..)`"),
            };
        };
        let Expr::Path(f) = &*c.func else {
            return err(&c.func, "calls are outside the section language");
        };
        let name = f
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if !self.id_read {
            return err(
                e,
                "read the id first: `let id = current_id();` comes before every access to memory",
            );
        }
        if let Some(width) = store_width(&name) {
            let args = two_args(c)?;
            let addr = self.addr(args[0])?;
            let src = self.value(args[1])?;
            if self.mode == Mode::Checked && !self.owned_vals[addr.base] {
                return err(args[0], "a store before the commit is speculative: it must go to memory the section owns until it commits, an address derived from a name in `#[owned(..)]`");
            }
            self.push(Op::Store { addr, src, width }, e);
            return Ok(());
        }
        if name == "copy" {
            if c.args.len() != 3 {
                return err(&c.args, "`copy(dst, src, len)`");
            }
            let dst = self.value(&c.args[0])?;
            let src = self.value(&c.args[1])?;
            let len = self.value(&c.args[2])?;
            if self.mode == Mode::Checked && !self.owned_vals[dst] {
                return err(&c.args[0], "the copy is speculative: its destination must be memory the section owns, an address derived from a name in `#[owned(..)]`");
            }
            if self.ops.iter().any(|op| matches!(op, Op::Copy { .. })) {
                return err(e, "a section has one bounded copy");
            }
            self.push(Op::Copy { dst, src, len }, e);
            return Ok(());
        }
        err(&c.func, "calls are outside the section language (a statement calls `storeN`, `store_ptr` or `copy`)")
    }

    fn commit(&mut self, mac: &syn::Macro) -> syn::Result<()> {
        let args = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)?;
        let (release, store) =
            match args.len() {
                1 => (self.default_release, &args[0]),
                2 => {
                    let release = match &args[0] {
                        Expr::Path(p) if p.path.is_ident("release") => true,
                        Expr::Path(p) if p.path.is_ident("relaxed") => false,
                        o => return err(o, "the commit's order is `relaxed` or `release`"),
                    };
                    (release, &args[1])
                }
                _ => return err(
                    mac,
                    "`commit!(store64(addr, value))` or `commit!(release, store64(addr, value))`",
                ),
            };
        if !self.id_read {
            return err(
                mac,
                "read the id first: `let id = current_id();` comes before every access to memory",
            );
        }
        let store = ungroup(store);
        let width = match store {
            Expr::Call(c) => match &*c.func {
                Expr::Path(f) => f.path.get_ident().and_then(|i| store_width(&i.to_string())),
                _ => None,
            },
            _ => None,
        };
        let (Some(width), Expr::Call(c)) = (width, store) else {
            return err(
                store,
                "the commit is one store: `store64(addr, value)` (or 8, 16, 32, `store_ptr`)",
            );
        };
        let args = two_args(c)?;
        let addr = self.addr(args[0])?;
        let src = self.value(args[1])?;
        self.push(
            Op::Commit {
                addr,
                src,
                width,
                release,
            },
            mac,
        );
        Ok(())
    }

    /// Unchecked mode: an earlier commit becomes a plain (published) store.
    fn demote_commit(&mut self) {
        if let Some(Op::Commit {
            addr, src, width, ..
        }) = self.ops.last().cloned()
        {
            *self.ops.last_mut().expect("an op") = Op::Store { addr, src, width };
        }
    }

    fn return_values(&mut self, e: &Expr, n: usize) -> syn::Result<Vec<Val>> {
        let items: Vec<&Expr> = match e {
            Expr::Tuple(t) => t.elems.iter().collect(),
            e => vec![e],
        };
        if items.len() != n {
            return err(e, format!("the section returns {n} value(s)"));
        }
        items
            .into_iter()
            .map(|e| match e {
                Expr::Path(p) => p
                    .path
                    .get_ident()
                    .and_then(|i| self.names.get(&i.to_string()).copied())
                    .map_or_else(
                        || err(e, "returned values are names bound before the commit"),
                        Ok,
                    ),
                e => err(e, "returned values are names bound before the commit"),
            })
            .collect()
    }

    /// `base + literal` as an address, anything else computed first.
    fn addr(&mut self, e: &Expr) -> syn::Result<Addr> {
        if let Expr::Binary(b) = e {
            if matches!(b.op, BinOp::Add(_)) {
                if let Some(off) = literal(&b.right) {
                    let off = off?;
                    if off < 2048 {
                        let base = self.value(&b.left)?;
                        return Ok(Addr {
                            base,
                            offset: off as i64,
                        });
                    }
                }
            }
        }
        if let Expr::Paren(p) = e {
            return self.addr(&p.expr);
        }
        let base = self.value(e)?;
        Ok(Addr { base, offset: 0 })
    }

    /// An operand in a register.
    fn value(&mut self, e: &Expr) -> syn::Result<Val> {
        let o = self.operand(e)?;
        Ok(self.force(o))
    }

    fn force(&mut self, o: Operand) -> Val {
        match o {
            Operand::Val(v) => v,
            Operand::Imm(i) => self.konst(quote!(#i)),
        }
    }

    fn operand(&mut self, e: &Expr) -> syn::Result<Operand> {
        if let Some(lit) = literal(e) {
            let n = lit?;
            return Ok(if n < 2048 {
                Operand::Imm(n as i64)
            } else {
                Operand::Val(self.konst(e.to_token_stream()))
            });
        }
        match e {
            Expr::Paren(p) => self.operand(&p.expr),
            Expr::Group(g) => self.operand(&g.expr),
            Expr::Path(p) => {
                if let Some(id) = p.path.get_ident() {
                    if let Some(v) = self.names.get(&id.to_string()) {
                        return Ok(Operand::Val(*v));
                    }
                    let s = id.to_string();
                    if !s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                        return err(id, "unknown name: inputs and `let` names only (constants are UPPER_CASE or paths)");
                    }
                }
                Ok(Operand::Val(self.konst(e.to_token_stream())))
            }
            Expr::Macro(m) if m.mac.path.segments.last().is_some_and(|s| s.ident == "offset_of") => Ok(Operand::Val(self.konst(e.to_token_stream()))),
            Expr::Call(c) => self.call(c, e),
            Expr::Binary(b) => self.binary(b),
            Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) && literal(&u.expr).is_some() => {
                // Values are 64-bit words: `-n` is its two's complement.
                let n = literal(&u.expr).expect("a literal")?;
                let w = n.wrapping_neg();
                Ok(Operand::Val(self.konst(quote!(#w))))
            }
            e if is_loop(e) => err(e, LOOP),
            Expr::If(_) | Expr::Match(_) => err(e, "`if` and `match` as values are outside the section language: a comparison leaves through an exit"),
            Expr::Closure(_) => err(e, "closures are outside the section language"),
            Expr::MethodCall(m) => err(&m.method, "method calls are outside the section language"),
            Expr::Unsafe(_) | Expr::Block(_) => err(e, "blocks are outside the section language"),
            Expr::Cast(_) => err(e, "casts are outside the section language (values are 64-bit; signed comparisons cast both sides to `i64`)"),
            Expr::Index(_) => err(e, "indexing is outside the section language: address memory as `base + (index << shift) + offset` and load it"),
            Expr::Field(_) => err(e, "fields are outside the section language: use `base + offset_of!(Type, field)`"),
            e => err(e, "this expression is outside the section language"),
        }
    }

    fn call(&mut self, c: &syn::ExprCall, e: &Expr) -> syn::Result<Operand> {
        let Expr::Path(f) = &*c.func else {
            return err(&c.func, "calls are outside the section language");
        };
        let last = f
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if matches!(last.as_str(), "size_of" | "align_of") && c.args.is_empty() {
            return Ok(Operand::Val(self.konst(e.to_token_stream())));
        }
        let name = f
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if let Some((width, signed, acquire)) = load_kind(&name) {
            if !self.id_read {
                return err(e, "a load before the id is read: `let id = current_id();` comes first, so every load sees the data of the CPU the section is armed for");
            }
            if c.args.len() != 1 {
                return err(&c.args, format!("`{name}(addr)` takes one address"));
            }
            let addr = self.addr(&c.args[0])?;
            let dst = self.temp(false);
            self.push(
                Op::Load {
                    dst,
                    addr,
                    width,
                    signed,
                    acquire,
                },
                e,
            );
            return Ok(Operand::Val(dst));
        }
        if name == "current_id" {
            return err(e, "the id is read once, first: `let id = current_id();`");
        }
        if store_width(&name).is_some() || name == "copy" {
            return err(e, "stores and the copy are statements, not values");
        }
        err(&c.func, "calls are outside the section language (the language's own are `loadN`, `load_signedN`, `load_acquireN`, `storeN`, `copy` and `current_id`)")
    }

    fn binary(&mut self, b: &syn::ExprBinary) -> syn::Result<Operand> {
        let op =
            match b.op {
                BinOp::Add(_) => AluOp::Add,
                BinOp::Sub(_) => AluOp::Sub,
                BinOp::BitAnd(_) => AluOp::And,
                BinOp::BitOr(_) => AluOp::Or,
                BinOp::BitXor(_) => AluOp::Xor,
                BinOp::Shl(_) => AluOp::Shl,
                BinOp::Shr(_) => AluOp::Shr,
                _ => return err(
                    b.op,
                    "operators are `+ - & | ^ << >>`; comparisons belong in `if .. { exit!(..) }`",
                ),
            };
        let a = self.operand(&b.left)?;
        let rhs = self.operand(&b.right)?;
        if matches!(op, AluOp::Shl | AluOp::Shr) {
            match rhs {
                Operand::Imm(k) if k < 64 => {}
                _ => return err(&b.right, "shift amounts are literals below 64"),
            }
        }
        let (a, rhs) = match (a, rhs) {
            (Operand::Imm(x), Operand::Imm(y)) => {
                let v = op.eval(x as u64, y as u64);
                return Ok(if v < 2048 {
                    Operand::Imm(v as i64)
                } else {
                    Operand::Val(self.konst(quote!(#v)))
                });
            }
            (Operand::Imm(x), Operand::Val(y))
                if matches!(op, AluOp::Add | AluOp::And | AluOp::Or | AluOp::Xor) =>
            {
                (y, Operand::Imm(x))
            }
            (a, r) => (self.force(a), r),
        };
        let owned = self.owned_vals[a] || matches!(rhs, Operand::Val(v) if self.owned_vals[v]);
        let dst = self.temp(owned);
        self.push(Op::Alu { dst, op, a, b: rhs }, b);
        Ok(Operand::Val(dst))
    }
}

fn signed_cast(e: &Expr) -> Option<&Expr> {
    match e {
        Expr::Paren(p) => signed_cast(&p.expr),
        Expr::Group(g) => signed_cast(&g.expr),
        Expr::Cast(c) if matches!(&*c.ty, syn::Type::Path(t) if t.path.is_ident("i64")) => {
            Some(&c.expr)
        }
        _ => None,
    }
}

fn two_args(c: &syn::ExprCall) -> syn::Result<[&Expr; 2]> {
    match c.args.iter().collect::<Vec<_>>().as_slice() {
        [a, b] => Ok([a, b]),
        _ => err(&c.args, "a store takes an address and a value"),
    }
}
