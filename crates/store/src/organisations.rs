//! The organisation tree and the scopes cut from it.

use crate::BeginWrite;
use crate::{Store, StoreError, now_millis, with_pool};

/// Where an organisation stands in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrganisationKind {
    /// The platform operator, the root.
    Operator,
    /// A system integrator, under the operator.
    Integrator,
    /// A business customer, under an integrator.
    Customer,
}

impl OrganisationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OrganisationKind::Operator => "operator",
            OrganisationKind::Integrator => "integrator",
            OrganisationKind::Customer => "customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(OrganisationKind::Operator),
            "integrator" => Some(OrganisationKind::Integrator),
            "customer" => Some(OrganisationKind::Customer),
            _ => None,
        }
    }

    /// The kind an organisation of this kind may have below it.
    pub fn child(self) -> Option<Self> {
        match self {
            OrganisationKind::Operator => Some(OrganisationKind::Integrator),
            OrganisationKind::Integrator => Some(OrganisationKind::Customer),
            OrganisationKind::Customer => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub kind: OrganisationKind,
    pub name: String,
    pub created_at: i64,
    pub(crate) path: String,
}

#[derive(sqlx::FromRow)]
struct OrganisationRow {
    id: i64,
    parent_id: Option<i64>,
    kind: String,
    name: String,
    path: String,
    created_at: i64,
}

impl TryFrom<OrganisationRow> for Organisation {
    type Error = StoreError;
    fn try_from(r: OrganisationRow) -> Result<Self, StoreError> {
        Ok(Organisation {
            id: r.id,
            parent_id: r.parent_id,
            kind: OrganisationKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Invalid(format!("organisation kind {:?}", r.kind)))?,
            name: r.name,
            created_at: r.created_at,
            path: r.path,
        })
    }
}

/// An organisation and everything below it: what a user of that organisation
/// may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub organisation_id: i64,
    pub(crate) path: String,
}

impl Scope {
    /// The SQL `LIKE` pattern of every path inside the scope.
    pub(crate) fn pattern(&self) -> String {
        format!("{}%", self.path)
    }

    pub(crate) fn contains(&self, path: &str) -> bool {
        path.starts_with(&self.path)
    }
}

const COLUMNS: &str = "id, parent_id, kind, name, path, created_at";

impl Store {
    /// Creates the operator, the root of the tree; there is one.
    pub async fn create_operator(&self, name: &str) -> Result<Organisation, StoreError> {
        self.insert_organisation(None, "/", OrganisationKind::Operator, name)
            .await
    }

    /// Creates an organisation under `parent_id`, which must be inside
    /// `scope`; its kind is the one below its parent's.
    pub async fn create_organisation(
        &self,
        scope: &Scope,
        parent_id: i64,
        name: &str,
    ) -> Result<Organisation, StoreError> {
        let parent = self.organisation(scope, parent_id).await?;
        let kind = parent.kind.child().ok_or_else(|| {
            StoreError::Invalid("a business customer has no organisations below it".into())
        })?;
        self.insert_organisation(Some(&parent), &parent.path, kind, name)
            .await
    }

    async fn insert_organisation(
        &self,
        parent: Option<&Organisation>,
        parent_path: &str,
        kind: OrganisationKind,
        name: &str,
    ) -> Result<Organisation, StoreError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("an organisation needs a name".into()));
        }
        let parent_id = parent.map(|p| p.id);
        let created_at = now_millis();
        let row: OrganisationRow = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if parent_id.is_none() {
                let roots: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organisations WHERE parent_id IS NULL")
                    .fetch_one(&mut *tx)
                    .await?;
                if roots > 0 {
                    return Err(StoreError::Conflict("the operator organisation".into()));
                }
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO organisations (parent_id, kind, name, path, created_at) VALUES ($1, $2, $3, '', $4) RETURNING id",
            )
            .bind(parent_id)
            .bind(kind.as_str())
            .bind(name)
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await?;
            let path = format!("{parent_path}{id}/");
            sqlx::query("UPDATE organisations SET path = $1 WHERE id = $2")
                .bind(&path)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query_as(&format!("SELECT {COLUMNS} FROM organisations WHERE id = $1"))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            row
        });
        row.try_into()
    }

    /// The scope of a user of `organisation_id`.
    pub async fn scope_of(&self, organisation_id: i64) -> Result<Scope, StoreError> {
        let path: Option<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT path FROM organisations WHERE id = $1")
                .bind(organisation_id)
                .fetch_optional(pool)
                .await?
        });
        let path =
            path.ok_or_else(|| StoreError::NotFound(format!("organisation {organisation_id}")))?;
        Ok(Scope {
            organisation_id,
            path,
        })
    }

    /// One organisation, if it is inside `scope` (otherwise not found: a
    /// tenant does not learn that another's exists).
    pub async fn organisation(&self, scope: &Scope, id: i64) -> Result<Organisation, StoreError> {
        let row: Option<OrganisationRow> = with_pool!(self, pool => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM organisations WHERE id = $1 AND path LIKE $2"))
                .bind(id)
                .bind(scope.pattern())
                .fetch_optional(pool)
                .await?
        });
        row.ok_or_else(|| StoreError::NotFound(format!("organisation {id}")))?
            .try_into()
    }

    /// Every organisation in `scope`, the scope's own first.
    pub async fn organisations(&self, scope: &Scope) -> Result<Vec<Organisation>, StoreError> {
        let rows: Vec<OrganisationRow> = with_pool!(self, pool => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM organisations WHERE path LIKE $1 ORDER BY path"))
                .bind(scope.pattern())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Organisation::try_from).collect()
    }
}
