//! TEMPORARY: the contract of the library's coming Pool/Stack/Buffer, to build against.
#![allow(dead_code)]
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
pub struct Node<T>(T);
impl<T> Node<T> {
    pub fn new(v: T) -> Box<Node<T>> {
        Box::new(Node(v))
    }
    pub fn into_inner(self: Box<Self>) -> T {
        self.0
    }
}
impl<T> Deref for Node<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
impl<T> DerefMut for Node<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}
pub struct Stack<T>(Mutex<Vec<Box<Node<T>>>>);
impl<T> Stack<T> {
    pub const fn new() -> Self {
        Stack(Mutex::new(Vec::new()))
    }
    pub fn push(&self, n: Box<Node<T>>) {
        self.0.lock().unwrap().push(n)
    }
    pub fn pop(&self) -> Option<Box<Node<T>>> {
        self.0.lock().unwrap().pop()
    }
    pub fn pop_all(&self) -> Vec<Box<Node<T>>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}
pub struct Pool<T> {
    make: Box<dyn Fn() -> T + Send + Sync>,
    s: Mutex<Vec<T>>,
}
impl<T> Pool<T> {
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Pool {
            make: Box::new(make),
            s: Mutex::new(Vec::new()),
        }
    }
    pub fn get(&self) -> Pooled<'_, T> {
        let v = self
            .s
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| (self.make)());
        Pooled(self, Some(v))
    }
    pub fn put(&self, v: T) {
        self.s.lock().unwrap().push(v)
    }
}
pub struct Pooled<'a, T>(&'a Pool<T>, Option<T>);
impl<T> Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.1.as_ref().unwrap()
    }
}
impl<T> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.1.as_mut().unwrap()
    }
}
impl<T> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(v) = self.1.take() {
            self.0.put(v)
        }
    }
}
pub struct Full<T>(pub T);
pub struct Buffer<T: Copy>(Mutex<Vec<T>>, usize);
impl<T: Copy> Buffer<T> {
    pub fn new(c: usize) -> Self {
        Buffer(Mutex::new(Vec::new()), c)
    }
    pub fn push(&self, r: T) -> Result<(), Full<T>> {
        let mut v = self.0.lock().unwrap();
        if v.len() >= self.1 {
            return Err(Full(r));
        }
        v.push(r);
        Ok(())
    }
    pub fn drain(&self, mut f: impl FnMut(usize, &[T])) -> Result<usize, restartable::RemoteError> {
        let v = std::mem::take(&mut *self.0.lock().unwrap());
        f(0, &v);
        Ok(v.len())
    }
}
