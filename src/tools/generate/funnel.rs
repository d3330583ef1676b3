//! The funnel of one product opened in a session: its stages, the probability of each decision
//! given the purchase logit `z` and the product's own counters in the session, and the purchase
//! probabilities ("truth") those decisions imply, solved backwards once when the product is
//! opened. "The funnel" and "Truth" in the generator's documentation give the equations.

/// Browsing views are capped here: `w(MAX_VIEWS) = 0`.
const MAX_VIEWS: usize = 12;
const VIEW_AGAIN: f64 = 0.5;
const VIEW_AGAIN_DECAY: f64 = 0.7;
const ACT_BIAS: f64 = -4.0;
const ACT_VIEW_WEIGHT: f64 = 1.0;
const ACT_VIEW_CAP: u32 = 3;
pub(super) const CART_SHARE: f64 = 0.95;
pub(super) const DIRECT_BUY_SHARE: f64 = 0.012;
pub(super) const VIEW_IN_CART: f64 = 0.45;
/// Removes are capped here: `r(MAX_REMOVES) = 0`.
const MAX_REMOVES: usize = 3;
const REMOVE: f64 = 0.2;
const RECART: f64 = 0.35;
const BUY_BIAS: f64 = -2.3;
const BUY_REMOVE_PENALTY: f64 = 0.4;

/// How a product stands in its funnel within a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Browsing,
    InCart,
    Removed,
    Bought,
    /// Lost interest or abandoned the cart: no more events this session.
    Left,
}

/// One product's decision probabilities in one session, and the purchase probabilities they
/// imply, precomputed once when the product is opened.
#[derive(Clone, Debug)]
pub(super) struct Funnel {
    logit: f64,
    /// `browse[v]`: P(bought later) right after the `v`-th view while browsing (index 0 unused).
    pub(super) browse: [f64; MAX_VIEWS + 1],
    /// `cart[k]`: P(bought later) while in the cart with `k` removes so far.
    pub(super) cart: [f64; MAX_REMOVES + 1],
}

impl Funnel {
    pub(super) fn new(logit: f64) -> Self {
        let mut funnel = Funnel {
            logit,
            browse: [0.0; MAX_VIEWS + 1],
            cart: [0.0; MAX_REMOVES + 1],
        };
        for removes in (0..=MAX_REMOVES).rev() {
            let settle = 1.0 - VIEW_IN_CART - funnel.remove(removes);
            let after_remove = if removes == MAX_REMOVES {
                0.0
            } else {
                funnel.remove(removes) * funnel.recart(removes + 1) * funnel.cart[removes + 1]
            };
            funnel.cart[removes] =
                (after_remove + settle * funnel.buy(removes)) / (1.0 - VIEW_IN_CART);
        }
        for views in (1..=MAX_VIEWS).rev() {
            let again = funnel.view_again(views);
            let later = if views == MAX_VIEWS {
                0.0
            } else {
                again * funnel.browse[views + 1]
            };
            let act = funnel.act(views);
            funnel.browse[views] = later
                + (1.0 - again) * (CART_SHARE * act * funnel.cart[0] + DIRECT_BUY_SHARE * act);
        }
        funnel
    }

    /// `w(v)`: viewing the product again after its `v`-th view.
    pub(super) fn view_again(&self, views: usize) -> f64 {
        if views >= MAX_VIEWS {
            0.0
        } else {
            VIEW_AGAIN * VIEW_AGAIN_DECAY.powi(views as i32 - 1)
        }
    }

    /// `g(v)`: the inclination to act (cart or buy) when not viewing again; grows with the views
    /// of the product in this session.
    pub(super) fn act(&self, views: usize) -> f64 {
        let extra_views = (views as u32).saturating_sub(1).min(ACT_VIEW_CAP);
        sigmoid(self.logit + ACT_BIAS + ACT_VIEW_WEIGHT * f64::from(extra_views))
    }

    /// `r(k)`: removing the product from the cart with `k` removes so far.
    pub(super) fn remove(&self, removes: usize) -> f64 {
        if removes >= MAX_REMOVES {
            0.0
        } else {
            REMOVE * 0.5f64.powi(removes as i32)
        }
    }

    /// `c(k)`: adding it back after the `k`-th remove (`k >= 1`).
    pub(super) fn recart(&self, removes: usize) -> f64 {
        RECART * 0.5f64.powi(removes as i32 - 1)
    }

    /// `b(k)`: buying a carted product when the cart settles, with `k` removes so far.
    pub(super) fn buy(&self, removes: usize) -> f64 {
        sigmoid(self.logit + BUY_BIAS - BUY_REMOVE_PENALTY * removes as f64)
    }
}

/// A product opened in the current session.
#[derive(Clone, Debug)]
pub(super) struct Interest {
    pub(super) product: u32,
    pub(super) stage: Stage,
    pub(super) views: usize,
    pub(super) removes: usize,
    pub(super) carts: u32,
    pub(super) funnel: Funnel,
}

impl Interest {
    pub(super) fn is_active(&self) -> bool {
        matches!(self.stage, Stage::Browsing | Stage::InCart | Stage::Removed)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_probabilities_solve_their_recursions() {
        let funnel = Funnel::new(0.3);
        for views in 1..MAX_VIEWS {
            let again = funnel.view_again(views);
            let act = funnel.act(views);
            let expected = again * funnel.browse[views + 1]
                + (1.0 - again) * act * (CART_SHARE * funnel.cart[0] + DIRECT_BUY_SHARE);
            assert!((funnel.browse[views] - expected).abs() < 1e-12);
        }
        // In the cart, a view changes nothing: the one-step equation holds with the self-loop.
        for removes in 0..MAX_REMOVES {
            let expected = VIEW_IN_CART * funnel.cart[removes]
                + funnel.remove(removes) * funnel.recart(removes + 1) * funnel.cart[removes + 1]
                + (1.0 - VIEW_IN_CART - funnel.remove(removes)) * funnel.buy(removes);
            assert!((funnel.cart[removes] - expected).abs() < 1e-12);
        }
        assert!((funnel.cart[MAX_REMOVES] - funnel.buy(MAX_REMOVES)).abs() < 1e-12);
        // More interest, cheaper or a better history all raise the probability.
        assert!(Funnel::new(1.0).browse[1] > funnel.browse[1]);
        assert!(funnel.browse[2] > funnel.browse[1]);
    }
}
