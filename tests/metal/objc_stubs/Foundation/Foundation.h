/* Foundation.h — a stand-in with only what native/src/metal/backend_metal.m uses, so that
 * libclang can parse the host on Linux (tests/test_metal.py). Written from Apple's
 * documented interfaces; it checks syntax and consistency with them, not the SDK itself. */
#pragma once
#include <stddef.h>
#include <stdint.h>
typedef unsigned long NSUInteger;
typedef long NSInteger;
typedef signed char BOOL;
#define YES ((BOOL)1)
#define NO ((BOOL)0)
#define nil ((id)0)
typedef long dispatch_once_t;
void dispatch_once(dispatch_once_t *predicate, void (^block)(void));
#define __MAC_15_0 150000
#define __MAC_OS_X_VERSION_MAX_ALLOWED 150000

@protocol NSObject
- (instancetype)retain;
- (oneway void)release;
- (instancetype)autorelease;
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject>
+ (instancetype)alloc;
+ (instancetype)new;
- (instancetype)init;
- (instancetype)retain;
- (oneway void)release;
- (instancetype)autorelease;
@end

@interface NSString : NSObject
+ (instancetype)stringWithUTF8String:(const char *)s;
@property(readonly) const char *UTF8String;
@end

@interface NSError : NSObject
@property(readonly, copy) NSString *localizedDescription;
@end
