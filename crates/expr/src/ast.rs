//! The syntax tree produced by the parser and walked by the evaluator.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Not,
    /// JUEL `empty x`.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

/// Built-in functions (FEEL only; JUEL has none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Func {
    Count,
    Contains,
    StringLength,
    IsDefined,
    UpperCase,
    LowerCase,
    StartsWith,
    EndsWith,
    ListContains,
    Sum,
    Min,
    Max,
    Abs,
    String,
    /// Not a known function; calling it is an evaluation error naming it.
    Unknown(String),
}

impl Func {
    /// Resolves a function name for the given dialect.
    pub fn resolve(name: &str, feel: bool) -> Func {
        if !feel {
            return Func::Unknown(name.to_string());
        }
        match name {
            "count" => Func::Count,
            "contains" => Func::Contains,
            "string length" => Func::StringLength,
            "is defined" => Func::IsDefined,
            "upper case" => Func::UpperCase,
            "lower case" => Func::LowerCase,
            "starts with" => Func::StartsWith,
            "ends with" => Func::EndsWith,
            "list contains" => Func::ListContains,
            "sum" => Func::Sum,
            "min" => Func::Min,
            "max" => Func::Max,
            "abs" => Func::Abs,
            "string" => Func::String,
            other => Func::Unknown(other.to_string()),
        }
    }

    /// FEEL function names made of two words (`string length(s)`).
    pub fn is_two_word_name(name: &str) -> bool {
        matches!(
            name,
            "string length"
                | "is defined"
                | "upper case"
                | "lower case"
                | "starts with"
                | "ends with"
                | "list contains"
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    Lit(Value),
    Var(String),
    Member(Box<Ast>, String),
    Index(Box<Ast>, Box<Ast>),
    List(Vec<Ast>),
    Unary(UnOp, Box<Ast>),
    Binary(BinOp, Box<Ast>, Box<Ast>),
    And(Box<Ast>, Box<Ast>),
    Or(Box<Ast>, Box<Ast>),
    /// JUEL `c ? a : b`, FEEL `if c then a else b`.
    Cond(Box<Ast>, Box<Ast>, Box<Ast>),
    Call(Func, Vec<Ast>),
}

impl Ast {
    /// Depth of the tree, computed without recursion (used to reject trees that would be too
    /// deep to evaluate safely).
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((node, d)) = stack.pop() {
            max = max.max(d);
            let d = d + 1;
            match node {
                Ast::Lit(_) | Ast::Var(_) => {}
                Ast::Member(a, _) | Ast::Unary(_, a) => stack.push((a, d)),
                Ast::Index(a, b) | Ast::Binary(_, a, b) | Ast::And(a, b) | Ast::Or(a, b) => {
                    stack.push((a, d));
                    stack.push((b, d));
                }
                Ast::Cond(a, b, c) => {
                    stack.push((a, d));
                    stack.push((b, d));
                    stack.push((c, d));
                }
                Ast::List(items) | Ast::Call(_, items) => {
                    stack.extend(items.iter().map(|i| (i, d)));
                }
            }
        }
        max
    }
}
