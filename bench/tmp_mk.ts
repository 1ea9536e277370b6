import { makeShapes } from '../lib';
makeShapes({ out: '/tmp/shapes96', train: 96, val: 0, size: 960, seed: 1 }).then(() => console.log('ok'));
