//! The element an `on-element` call reads, lent to the plugin for the length of that call.
//!
//! A plugin reads an element's tag and attributes through host calls while its callback runs.
//! Copying every attribute of every subscribed element up front, whether the plugin reads them
//! or not, was about a fifth of what a callback cost the host (the `element-callbacks` line of
//! the runtime micro-benchmark); so the host functions read the rewriter's element where it
//! lies, through a pointer that is only followed while the call that was lent it is running.
//!
//! That rule is kept by a loan number rather than by the caller's care: [`Lending::lend`]
//! returns a [`Loan`] whose drop (also on unwinding) ends the loan, and [`LentElement::get`]
//! follows the pointer only while its loan is the current one. A handle the guest kept, or an
//! entry a cancelled call left in the resource table, reads nothing afterwards.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a plugin may read of an element while its `on-element` call runs.
pub trait ElementView {
    /// Tag name, lower case.
    fn tag(&self) -> String;
    /// An attribute's value by name (ASCII case-insensitive), as written in the page.
    fn attribute(&self, name: &str) -> Option<String>;
    /// All attributes in document order, names lower case.
    fn attributes(&self) -> Vec<(String, String)>;
}

/// One store's loans: the current one's number (0: none) and the next number to give.
#[derive(Default)]
struct Loans {
    current: AtomicU64,
    issued: AtomicU64,
}

/// Lends elements to one store's calls, one at a time.
#[derive(Default)]
pub(crate) struct Lending(Arc<Loans>);

impl Lending {
    /// Lends `element` until the returned [`Loan`] is dropped.
    pub(crate) fn lend<'e>(&self, element: &'e (dyn ElementView + 'e)) -> (LentElement, Loan<'e>) {
        let number = self.0.issued.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.current.store(number, Ordering::Release);
        let lent = LentElement {
            element: erase(element),
            number,
            loans: self.0.clone(),
        };
        let loan = Loan {
            loans: self.0.clone(),
            _element: PhantomData,
        };
        (lent, loan)
    }
}

/// An element lent to a call; readable while that call's [`Loan`] lasts.
pub(crate) struct LentElement {
    element: NonNull<dyn ElementView + 'static>,
    number: u64,
    loans: Arc<Loans>,
}

#[expect(
    unsafe_code,
    reason = "the resource table needs Send; see the SAFETY note"
)]
// SAFETY: the pointer is followed only by `get`, and only while this value's loan is current.
// A loan is current only inside `Instance::on_element`, which holds the lent `&dyn
// ElementView` and the store's `&mut` for the whole synchronous call, so the store (and this
// value in its table) cannot be on another thread while the pointer is followed.
unsafe impl Send for LentElement {}

impl LentElement {
    /// The element, while its loan lasts; `None` once the call it was lent to has ended.
    pub(crate) fn get(&self) -> Option<&dyn ElementView> {
        if self.loans.current.load(Ordering::Acquire) != self.number {
            return None;
        }
        #[expect(
            unsafe_code,
            reason = "following the lent pointer; see the SAFETY note"
        )]
        // SAFETY: the loan is current, so the `Loan<'e>` made with this pointer has not been
        // dropped, so the `&'e dyn ElementView` it was made from is still borrowed by the
        // caller of `lend` and alive; nothing mutates the element while it is lent (the
        // caller holds only that shared borrow until the loan ends).
        Some(unsafe { self.element.as_ref() })
    }
}

/// Keeps a loan current; dropping it ends the loan.
pub(crate) struct Loan<'e> {
    loans: Arc<Loans>,
    _element: PhantomData<&'e dyn ElementView>,
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.loans.current.store(0, Ordering::Release);
    }
}

/// The element's pointer with its borrow's lifetime erased; `LentElement::get` stands in for
/// the lifetime.
#[expect(
    unsafe_code,
    reason = "erasing the lent element's lifetime; see the SAFETY note"
)]
fn erase<'e>(element: &'e (dyn ElementView + 'e)) -> NonNull<dyn ElementView + 'static> {
    let ptr: NonNull<dyn ElementView + 'e> = NonNull::from(element);
    // SAFETY: only the trait object's lifetime bound changes (same layout and vtable); the
    // pointer is followed only while the loan made with it is current, within `'e`.
    unsafe {
        std::mem::transmute::<NonNull<dyn ElementView + 'e>, NonNull<dyn ElementView + 'static>>(
            ptr,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Link(String);

    impl ElementView for Link {
        fn tag(&self) -> String {
            "a".into()
        }
        fn attribute(&self, name: &str) -> Option<String> {
            name.eq_ignore_ascii_case("href").then(|| self.0.clone())
        }
        fn attributes(&self) -> Vec<(String, String)> {
            vec![("href".into(), self.0.clone())]
        }
    }

    #[test]
    fn a_lent_element_reads_only_while_its_loan_lasts() {
        let lending = Lending::default();
        let first = Link("/one".into());
        let (kept, loan) = lending.lend(&first);
        assert_eq!(
            kept.get().and_then(|e| e.attribute("HREF")),
            Some("/one".into())
        );
        drop(loan);
        assert!(kept.get().is_none(), "read after its call ended");
        // A later loan does not revive an earlier element.
        let second = Link("/two".into());
        let (now, _loan) = lending.lend(&second);
        assert!(kept.get().is_none());
        assert_eq!(now.get().map(|e| e.tag()), Some("a".into()));
    }
}
